"""PostgreSQL schema, migrations and the SQL the store runs.

Appends and deletes are PL/pgSQL functions, so each is one round trip and one
transaction that holds the thread's row lock from start to commit.
"""

from __future__ import annotations

from typing import Final

SCHEMA: Final = "agent_core"
# pg_advisory_xact_lock key that serializes migrations across processes ("agentcor").
MIGRATION_LOCK: Final = 0x6167656E74636F72

CHANGES_CHANNEL: Final = "agent_core_changes"
INTERNAL_FLAG: Final = "agent_core.internal"

# Errors raised by the functions below, mapped to typed errors by the store.
VERSION_CONFLICT_STATE: Final = "AC001"
KEY_REUSED_STATE: Final = "AC002"


def _append_function(*, tokens: bool, key_ttl: bool) -> str:
    """``agent_core.append``: as first made (migration 1), with token counts beside the
    payloads (migration 2), and with the TTL of idempotency keys as an eighth argument
    (migration 4), after which an older key counts as absent."""
    tokens_argument = " p_tokens jsonb[]," if tokens else ""
    insert_messages = (
        f"""-- A NULL p_tokens unnests as no rows, which pads every message's tokens with NULL.
        INSERT INTO {SCHEMA}.messages (namespace, thread_id, seq, payload, tokens)
        SELECT p_namespace, p_thread_id, current_version + u.ordinality, u.payload, u.tokens
        FROM unnest(p_payloads, p_tokens) WITH ORDINALITY AS u(payload, tokens, ordinality);"""
        if tokens
        else f"""INSERT INTO {SCHEMA}.messages (namespace, thread_id, seq, payload)
        SELECT p_namespace, p_thread_id, current_version + u.ordinality, u.payload
        FROM unnest(p_payloads) WITH ORDINALITY AS u(payload, ordinality);"""
    )
    ttl_argument = ", p_key_ttl double precision" if key_ttl else ""
    ttl_condition = (
        "\n                AND k.created_at > now() - make_interval(secs => p_key_ttl)"
        if key_ttl
        else ""
    )
    # An expired key's row may still be there: this use replaces it.
    key_insert = (
        f"""INSERT INTO {SCHEMA}.idempotency_keys AS k
                (namespace, thread_id, key, version, digest, created_at)
            VALUES (p_namespace, p_thread_id, p_key,
                    current_version + cardinality(p_payloads), p_digest, now())
            ON CONFLICT (namespace, thread_id, key) DO UPDATE
            SET version = excluded.version, digest = excluded.digest,
                created_at = excluded.created_at;"""
        if key_ttl
        else f"""INSERT INTO {SCHEMA}.idempotency_keys (namespace, thread_id, key, version, digest)
            VALUES (p_namespace, p_thread_id, p_key,
                    current_version + cardinality(p_payloads), p_digest);"""
    )
    return f"""
    CREATE FUNCTION {SCHEMA}.append(
        p_namespace text, p_thread_id text, p_payloads json[],{tokens_argument}
        p_expected bigint, p_key text, p_digest bytea{ttl_argument}
    ) RETURNS TABLE (version bigint, applied boolean)
    LANGUAGE plpgsql AS $$
    DECLARE
        current_version bigint;
        prior_version bigint;
        prior_digest bytea;
    BEGIN
        PERFORM set_config('{INTERNAL_FLAG}', 'on', true);
        -- The no-op update takes the row lock, for new and existing threads alike.
        INSERT INTO {SCHEMA}.threads AS t (namespace, thread_id)
        VALUES (p_namespace, p_thread_id)
        ON CONFLICT (namespace, thread_id) DO UPDATE SET version = t.version
        RETURNING t.version INTO current_version;
        IF p_key IS NOT NULL THEN
            SELECT k.version, k.digest INTO prior_version, prior_digest
            FROM {SCHEMA}.idempotency_keys k
            WHERE k.namespace = p_namespace AND k.thread_id = p_thread_id
                AND k.key = p_key{ttl_condition};
            IF FOUND THEN
                IF prior_digest <> p_digest THEN
                    RAISE EXCEPTION USING ERRCODE = '{KEY_REUSED_STATE}',
                        MESSAGE = prior_version::text;
                END IF;
                PERFORM set_config('{INTERNAL_FLAG}', 'off', true);
                RETURN QUERY SELECT prior_version, false;
                RETURN;
            END IF;
        END IF;
        IF p_expected IS NOT NULL AND p_expected <> current_version THEN
            -- Raising rolls back the thread row a new thread's insert created.
            RAISE EXCEPTION USING ERRCODE = '{VERSION_CONFLICT_STATE}',
                MESSAGE = current_version::text;
        END IF;
        {insert_messages}
        UPDATE {SCHEMA}.threads t
        SET version = current_version + cardinality(p_payloads), updated_at = now()
        WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id;
        IF p_key IS NOT NULL THEN
            {key_insert}
        END IF;
        PERFORM set_config('{INTERNAL_FLAG}', 'off', true);
        RETURN QUERY SELECT current_version + cardinality(p_payloads), true;
    END
    $$;
"""


MIGRATIONS: Final[tuple[str, ...]] = (
    f"""
    CREATE TABLE {SCHEMA}.threads (
        namespace text COLLATE "C" NOT NULL,
        thread_id text COLLATE "C" NOT NULL,
        version bigint NOT NULL DEFAULT 0,
        cleared_through bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (namespace, thread_id)
    );
    CREATE TABLE {SCHEMA}.messages (
        namespace text COLLATE "C" NOT NULL,
        thread_id text COLLATE "C" NOT NULL,
        seq bigint NOT NULL,
        payload json NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (namespace, thread_id, seq)
    );
    CREATE TABLE {SCHEMA}.idempotency_keys (
        namespace text COLLATE "C" NOT NULL,
        thread_id text COLLATE "C" NOT NULL,
        key text NOT NULL,
        version bigint NOT NULL,
        digest bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (namespace, thread_id, key)
    );

    """
    + _append_function(tokens=False, key_ttl=False)
    + f"""
    CREATE FUNCTION {SCHEMA}.delete_thread(p_namespace text, p_thread_id text)
    RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE
        current_version bigint;
        cleared bigint;
    BEGIN
        PERFORM set_config('{INTERNAL_FLAG}', 'on', true);
        -- Decide under the row lock: a concurrent append must be fully before or after.
        SELECT t.version, t.cleared_through INTO current_version, cleared
        FROM {SCHEMA}.threads t
        WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id
        FOR UPDATE;
        IF NOT FOUND THEN
            RETURN 0;
        END IF;
        IF current_version = cleared THEN
            RETURN current_version;
        END IF;
        UPDATE {SCHEMA}.threads t
        SET version = current_version + 1, cleared_through = current_version + 1,
            updated_at = now()
        WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id;
        DELETE FROM {SCHEMA}.messages m
        WHERE m.namespace = p_namespace AND m.thread_id = p_thread_id;
        DELETE FROM {SCHEMA}.idempotency_keys k
        WHERE k.namespace = p_namespace AND k.thread_id = p_thread_id;
        PERFORM set_config('{INTERNAL_FLAG}', 'off', true);
        RETURN current_version + 1;
    END
    $$;
    """,
    # External change detection: a row that another program inserts, updates or
    # deletes in `messages` moves the thread's version and is announced with
    # NOTIFY. agent-core's own functions set a transaction-local flag that the
    # trigger's WHEN clause checks, so they pay no trigger call.
    f"""
    CREATE FUNCTION {SCHEMA}.external_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        changed record;
        new_version bigint;
    BEGIN
        IF TG_OP = 'DELETE' THEN changed := OLD; ELSE changed := NEW; END IF;
        INSERT INTO {SCHEMA}.threads AS t (namespace, thread_id, version)
        VALUES (changed.namespace, changed.thread_id, changed.seq)
        ON CONFLICT (namespace, thread_id) DO UPDATE
        SET version = greatest(
                t.version + 1, CASE WHEN TG_OP = 'INSERT' THEN changed.seq ELSE 0 END),
            updated_at = now()
        RETURNING t.version INTO new_version;
        PERFORM pg_notify('{CHANGES_CHANNEL}', json_build_object(
            'namespace', changed.namespace, 'thread_id', changed.thread_id,
            'version', new_version)::text);
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER messages_external_change
    AFTER INSERT OR DELETE OR UPDATE OF payload ON {SCHEMA}.messages
    FOR EACH ROW
    WHEN (coalesce(current_setting('{INTERNAL_FLAG}', true), '') <> 'on')
    EXECUTE FUNCTION {SCHEMA}.external_change();
    """,
    # Per-message token counts, a jsonb object by encoding name. The trigger above
    # watches `payload` only, so recording counts is not an external change. append
    # takes the counts beside the payloads; the 6-argument append stays, so that
    # processes of the previous release keep appending (without counts, which are
    # then made on first use) during a rolling upgrade.
    f"""
    ALTER TABLE {SCHEMA}.messages ADD COLUMN tokens jsonb;

    """
    + _append_function(tokens=True, key_ttl=False)
    + f"""
    CREATE FUNCTION {SCHEMA}.set_tokens(
        p_namespace text, p_thread_id text, p_key text, p_seqs bigint[], p_counts bigint[]
    ) RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE
        updated bigint;
    BEGIN
        -- Every writer of a thread takes its row lock first, so this update of
        -- message rows cannot deadlock with a delete or another set_tokens.
        PERFORM FROM {SCHEMA}.threads t
        WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id
        FOR NO KEY UPDATE;
        -- Merged in SQL, so counts stored under other keys are kept; anything but
        -- an object (written by another program) starts afresh.
        UPDATE {SCHEMA}.messages m
        SET tokens = CASE jsonb_typeof(m.tokens) WHEN 'object' THEN m.tokens ELSE '{{}}' END
            || jsonb_build_object(p_key, c.count)
        FROM unnest(p_seqs, p_counts) AS c(seq, count)
        WHERE m.namespace = p_namespace AND m.thread_id = p_thread_id AND m.seq = c.seq;
        GET DIAGNOSTICS updated = ROW_COUNT;
        RETURN updated;
    END
    $$;
    """,
    # The database's random identity, made once: caches key shared entries by it.
    f"""
    CREATE TABLE {SCHEMA}.identity (id text NOT NULL);
    INSERT INTO {SCHEMA}.identity (id) VALUES (replace(gen_random_uuid()::text, '-', ''));
    """,
    # Idempotency keys expire: append takes the TTL (seconds) and treats an older key
    # as absent (its row is replaced); the sweep finds the oldest keys by the index. The
    # 7-argument append stays for processes of the previous release (keys never expire
    # for them) during a rolling upgrade.
    f"""
    CREATE INDEX idempotency_keys_created ON {SCHEMA}.idempotency_keys (created_at);
    """
    + _append_function(tokens=True, key_ttl=True),
    # Thread metadata, a small string map per thread; the index serves list filters.
    f"""
    CREATE TABLE {SCHEMA}.thread_metadata (
        namespace text COLLATE "C" NOT NULL,
        thread_id text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value text COLLATE "C" NOT NULL,
        PRIMARY KEY (namespace, thread_id, key)
    );
    CREATE INDEX thread_metadata_lookup
        ON {SCHEMA}.thread_metadata (namespace, key, value, thread_id);
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

CREATE_SCHEMA: Final = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""
CURRENT_VERSION: Final = f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_migrations"
RECORD_VERSION: Final = f"INSERT INTO {SCHEMA}.schema_migrations (version) VALUES ($1)"

APPEND: Final = f"SELECT version, applied FROM {SCHEMA}.append($1, $2, $3, $4, $5, $6, $7, $8)"
EXPIRE_IDEMPOTENCY_KEYS: Final = f"""
DELETE FROM {SCHEMA}.idempotency_keys WHERE (namespace, thread_id, key) IN (
    SELECT namespace, thread_id, key FROM {SCHEMA}.idempotency_keys
    WHERE created_at <= now() - make_interval(secs => $1)
    ORDER BY created_at LIMIT $2
)
"""
SET_TOKENS: Final = f"SELECT {SCHEMA}.set_tokens($1, $2, $3, $4, $5)"
DELETE: Final = f"SELECT {SCHEMA}.delete_thread($1, $2)"
IDENTITY: Final = f"SELECT id FROM {SCHEMA}.identity"
VERSION: Final = f"SELECT version FROM {SCHEMA}.threads WHERE namespace = $1 AND thread_id = $2"
# One statement, so the version and the rows come from the same snapshot. A thread
# with no row yields no rows (version 0); with no messages, one row of NULLs.
READ: Final = f"""
SELECT t.version, m.seq, m.payload, m.tokens
FROM {SCHEMA}.threads t
LEFT JOIN {SCHEMA}.messages m
    ON m.namespace = t.namespace AND m.thread_id = t.thread_id AND m.seq > $3
WHERE t.namespace = $1 AND t.thread_id = $2
ORDER BY m.seq
"""
READ_LAST: Final = f"""
SELECT t.version, m.seq, m.payload, m.tokens
FROM {SCHEMA}.threads t
LEFT JOIN LATERAL (
    SELECT seq, payload, tokens FROM {SCHEMA}.messages
    WHERE namespace = t.namespace AND thread_id = t.thread_id AND seq > $3
    ORDER BY seq DESC LIMIT $4
) m ON true
WHERE t.namespace = $1 AND t.thread_id = $2
ORDER BY m.seq
"""
# purge_namespace: rows first, thread rows last, in one transaction under the flag.
INTERNAL_ON: Final = f"SELECT set_config('{INTERNAL_FLAG}', 'on', true)"
PURGE_ROWS: Final = (
    f"DELETE FROM {SCHEMA}.messages WHERE namespace = $1",
    f"DELETE FROM {SCHEMA}.idempotency_keys WHERE namespace = $1",
    f"DELETE FROM {SCHEMA}.thread_metadata WHERE namespace = $1",
)
DELETE_METADATA: Final = (
    f"DELETE FROM {SCHEMA}.thread_metadata WHERE namespace = $1 AND thread_id = $2"
)
# One statement: the version, the count and the metadata come from one snapshot.
THREAD_INFO: Final = f"""
SELECT t.version, t.created_at, t.updated_at,
    (SELECT count(*) FROM {SCHEMA}.messages m
     WHERE m.namespace = t.namespace AND m.thread_id = t.thread_id),
    ARRAY(SELECT md.key FROM {SCHEMA}.thread_metadata md
          WHERE md.namespace = t.namespace AND md.thread_id = t.thread_id ORDER BY md.key),
    ARRAY(SELECT md.value FROM {SCHEMA}.thread_metadata md
          WHERE md.namespace = t.namespace AND md.thread_id = t.thread_id ORDER BY md.key)
FROM {SCHEMA}.threads t
WHERE t.namespace = $1 AND t.thread_id = $2
"""
# update_thread: the thread row (made if new) is locked first, as every writer does.
LOCK_THREAD: Final = f"""
INSERT INTO {SCHEMA}.threads AS t (namespace, thread_id) VALUES ($1, $2)
ON CONFLICT (namespace, thread_id) DO UPDATE SET updated_at = now()
"""
REMOVE_METADATA: Final = f"""
DELETE FROM {SCHEMA}.thread_metadata
WHERE namespace = $1 AND thread_id = $2 AND key = ANY($3::text[])
"""
SET_METADATA: Final = f"""
INSERT INTO {SCHEMA}.thread_metadata (namespace, thread_id, key, value)
SELECT $1, $2, u.key, u.value FROM unnest($3::text[], $4::text[]) AS u(key, value)
ON CONFLICT (namespace, thread_id, key) DO UPDATE SET value = excluded.value
"""
PURGE_THREADS: Final = f"DELETE FROM {SCHEMA}.threads WHERE namespace = $1"
LIST: Final = f"""
SELECT t.thread_id FROM {SCHEMA}.threads t
WHERE t.namespace = $1 AND t.thread_id > $2
    AND (t.version > t.cleared_through OR EXISTS (
        SELECT FROM {SCHEMA}.thread_metadata m
        WHERE m.namespace = t.namespace AND m.thread_id = t.thread_id))
"""
#: One more condition of LIST per metadata pair (``{key}``, ``{value}``: parameter numbers).
LIST_FILTER: Final = f"""
    AND t.thread_id IN (SELECT m.thread_id FROM {SCHEMA}.thread_metadata m
        WHERE m.namespace = $1 AND m.key = ${{key}} AND m.value = ${{value}})
"""
