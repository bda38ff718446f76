"""`SUMMARY_NAME`: the ``name`` that marks a compaction summary in a thread.

A compaction summary is a system message ``{"role": "system", "name": SUMMARY_NAME,
"content": "..."}`` that stands for the older messages it replaced. Whatever writes
summaries names them so, and whatever reads threads may find them by it:
`AnthropicChatModel` puts a prompt-cache breakpoint on the last one (DESIGN, "Anthropic
model"), so that a new summary costs a cache write from the summary on, not from the
system prompt.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SUMMARY_NAME"]

SUMMARY_NAME: Final = "agent_core_summary"
