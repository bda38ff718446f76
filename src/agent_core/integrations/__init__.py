"""Drop-in memory for agent frameworks, each in its own module behind its extra:
``agent_core.integrations.openai_agents`` (``agent-core[openai-agents]``),
``agent_core.integrations.langchain`` (``agent-core[langchain]``) and
``agent_core.integrations.pydantic_ai`` (``agent-core[pydantic-ai]``). Importing this
package imports no framework."""
