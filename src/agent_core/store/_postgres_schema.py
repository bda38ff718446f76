"""PostgreSQL schema, migrations and the SQL the store runs.

Appends, deletes, forks and the sweep of expired threads are PL/pgSQL functions, so
each is one round trip and one transaction that holds the thread's row lock from start
to commit. A splice, which locates its rows in Python (store/_order.py), is a
transaction of two statements.

Text built by the helpers below is part of the migrations that use it: a change to a
helper that a released migration used belongs in a new migration (the old output must
stay as it was, which the template's flags ensure for `_append_function`).
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
#: fork: the version asked for is not there to copy (message: "version rewritten_at").
FORK_VERSION_STATE: Final = "AC003"
#: fork: the target thread holds messages (message: its version).
THREAD_EXISTS_STATE: Final = "AC004"
#: The states above: answers of the store's functions, not failures.
REFUSED_STATES: Final = (
    VERSION_CONFLICT_STATE,
    KEY_REUSED_STATE,
    FORK_VERSION_STATE,
    THREAD_EXISTS_STATE,
)


#: The latest expiry (the year 9999, as `_validation.MAX_TIMESTAMP`), written out here
#: because migration 8 bakes it in.
_LAST_EXPIRY: Final = "253402300799"


def _extended(expires: str, retention: str) -> str:
    """SQL for the expiry ``expires`` (timestamptz) extended by a write that asks for
    ``retention`` seconds (double precision, NULL for none): now() + retention if that is
    later (a NULL expiry is earlier than any), capped at the year 9999 as the store's
    timestamps are (`check_timestamp`), so no retention overflows the type."""
    return (
        f"CASE WHEN {retention} IS NULL THEN {expires} ELSE greatest({expires},"
        f" to_timestamp(least(date_part('epoch', now()) + {retention}, {_LAST_EXPIRY})))"
        " END"
    )


def _append_function(*, tokens: bool, key_ttl: bool, retention: bool = False) -> str:
    """``agent_core.append``: as first made (migration 1), with token counts beside the
    payloads (migration 2), with the TTL of idempotency keys as an eighth argument
    (migration 5), after which an older key counts as absent, and with the thread's
    retention as a ninth (migration 8): an expired thread is deleted first (at the
    version it reads as), and the expiry is returned (seconds since the epoch)."""
    assert (key_ttl and tokens) or not retention, "retention builds on tokens and key TTLs"
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
    if retention:
        retention_argument = ", p_retention double precision"
        returns = "version bigint, applied boolean, expires_at double precision"
        declare_expiry = "\n        expiry timestamptz;"
        locked = f"""RETURNING t.version, t.expires_at INTO current_version, expiry;
        IF expiry <= now() THEN  -- reads as deleted already: deleted now, at that version
            current_version := {SCHEMA}.erase_thread(p_namespace, p_thread_id, current_version);
            expiry := NULL;
        END IF;"""
        answer = ", date_part('epoch', expiry)"
        touch = f""",
            expires_at = {_extended("t.expires_at", "p_retention")}
        WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id
        RETURNING t.expires_at INTO expiry;"""
    else:
        retention_argument = declare_expiry = answer = ""
        returns = "version bigint, applied boolean"
        locked = "RETURNING t.version INTO current_version;"
        touch = """
        WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id;"""
    return f"""
    CREATE FUNCTION {SCHEMA}.append(
        p_namespace text, p_thread_id text, p_payloads json[],{tokens_argument}
        p_expected bigint, p_key text, p_digest bytea{ttl_argument}{retention_argument}
    ) RETURNS TABLE ({returns})
    LANGUAGE plpgsql AS $$
    DECLARE
        current_version bigint;
        prior_version bigint;
        prior_digest bytea;{declare_expiry}
    BEGIN
        PERFORM set_config('{INTERNAL_FLAG}', 'on', true);
        -- The no-op update takes the row lock, for new and existing threads alike.
        INSERT INTO {SCHEMA}.threads AS t (namespace, thread_id)
        VALUES (p_namespace, p_thread_id)
        ON CONFLICT (namespace, thread_id) DO UPDATE SET version = t.version
        {locked}
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
                RETURN QUERY SELECT prior_version, false{answer};
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
        SET version = current_version + cardinality(p_payloads), updated_at = now(){touch}
        IF p_key IS NOT NULL THEN
            {key_insert}
        END IF;
        PERFORM set_config('{INTERNAL_FLAG}', 'off', true);
        RETURN QUERY SELECT current_version + cardinality(p_payloads), true{answer};
    END
    $$;
"""


#: fork_thread's lock of its source (migration 8), shared unless it looked expired
#: (an expired source is erased, which needs the exclusive lock).
_LOCK_SOURCE: Final = f"""IF source_exclusive THEN
                SELECT t.version, t.rewritten_at, t.expires_at
                INTO source_version, source_rewritten, source_expiry
                FROM {SCHEMA}.threads t
                WHERE t.namespace = p_namespace AND t.thread_id = p_source
                FOR UPDATE;
            ELSE
                SELECT t.version, t.rewritten_at, t.expires_at
                INTO source_version, source_rewritten, source_expiry
                FROM {SCHEMA}.threads t
                WHERE t.namespace = p_namespace AND t.thread_id = p_source
                FOR SHARE;
            END IF;"""


def _delete_function(*, rewrites: bool) -> str:
    """``agent_core.delete_thread``: as first made (migration 1), and replaced to set
    ``rewritten_at`` too (migration 7)."""
    create = "CREATE OR REPLACE FUNCTION" if rewrites else "CREATE FUNCTION"
    rewritten = "rewritten_at = current_version + 1, " if rewrites else ""
    return f"""    {create} {SCHEMA}.delete_thread(p_namespace text, p_thread_id text)
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
            {rewritten}updated_at = now()
        WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id;
        DELETE FROM {SCHEMA}.messages m
        WHERE m.namespace = p_namespace AND m.thread_id = p_thread_id;
        DELETE FROM {SCHEMA}.idempotency_keys k
        WHERE k.namespace = p_namespace AND k.thread_id = p_thread_id;
        PERFORM set_config('{INTERNAL_FLAG}', 'off', true);
        RETURN current_version + 1;
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
    + _delete_function(rewrites=False),
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
    # Splices and forks. A message's place is its order key (coalesce(anchor, seq),
    # frac), so rows go between others without renumbering any (store/_order.py);
    # appended rows keep anchor NULL and frac empty. `rewritten_at` is the last version
    # that rewrote history (a splice, a delete, a fork, another program's delete or
    # update), before which a fork can't rebuild the thread.
    f"""
    ALTER TABLE {SCHEMA}.messages
        ADD COLUMN anchor bigint,
        ADD COLUMN frac bytea NOT NULL DEFAULT '';
    CREATE INDEX messages_order
        ON {SCHEMA}.messages (namespace, thread_id, (coalesce(anchor, seq)), frac);
    ALTER TABLE {SCHEMA}.threads ADD COLUMN rewritten_at bigint NOT NULL DEFAULT 0;
    UPDATE {SCHEMA}.threads SET rewritten_at = cleared_through WHERE cleared_through <> 0;

"""
    + _delete_function(rewrites=True)
    + f"""
    -- Another program's delete or update rewrites history; its insert adds to it.
    CREATE OR REPLACE FUNCTION {SCHEMA}.external_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        changed record;
        new_version bigint;
    BEGIN
        IF TG_OP = 'DELETE' THEN changed := OLD; ELSE changed := NEW; END IF;
        INSERT INTO {SCHEMA}.threads AS t (namespace, thread_id, version, rewritten_at)
        VALUES (changed.namespace, changed.thread_id, changed.seq,
                CASE WHEN TG_OP = 'INSERT' THEN 0 ELSE changed.seq END)
        ON CONFLICT (namespace, thread_id) DO UPDATE
        SET version = greatest(
                t.version + 1, CASE WHEN TG_OP = 'INSERT' THEN changed.seq ELSE 0 END),
            rewritten_at = CASE WHEN TG_OP = 'INSERT' THEN t.rewritten_at
                ELSE t.version + 1 END,
            updated_at = now()
        RETURNING t.version INTO new_version;
        PERFORM pg_notify('{CHANGES_CHANNEL}', json_build_object(
            'namespace', changed.namespace, 'thread_id', changed.thread_id,
            'version', new_version)::text);
        RETURN NULL;
    END
    $$;

    -- A splice's first half, which its transaction starts with: the thread's row lock
    -- (held to the commit), its version, an unexpired use of the idempotency key, and
    -- then either the row count (p_from_end NULL) or the rows that locate the splice
    -- (store/_order.py's Fetch). The first row is the header (version, prior use,
    -- count); the message rows follow, in the order they were read. Every statement
    -- here sees what committed before the lock was granted.
    CREATE FUNCTION {SCHEMA}.splice_rows(
        p_namespace text, p_thread_id text, p_key text, p_key_ttl double precision,
        p_from_end boolean, p_offset bigint, p_limit bigint
    ) RETURNS TABLE (
        version bigint, prior_version bigint, prior_digest bytea, total bigint,
        seq bigint, place bigint, frac bytea, payload json, row_id tid
    )
    -- Sorting a thread is never how its ends are read: without this, a planner whose
    -- statistics have not seen the thread yet may sort all of its rows to take two.
    LANGUAGE plpgsql SET enable_sort = off AS $$
    DECLARE
        current_version bigint;
        found_version bigint;
        found_digest bytea;
    BEGIN
        -- The splice's own deletes and inserts are not external changes.
        PERFORM set_config('{INTERNAL_FLAG}', 'on', true);
        SELECT t.version INTO current_version
        FROM {SCHEMA}.threads t
        WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id
        FOR UPDATE;
        IF NOT FOUND THEN  -- a new thread: its row, made now, is locked all the same
            INSERT INTO {SCHEMA}.threads AS t (namespace, thread_id)
            VALUES (p_namespace, p_thread_id)
            ON CONFLICT (namespace, thread_id) DO UPDATE SET version = t.version
            RETURNING t.version INTO current_version;
        END IF;
        IF p_key IS NOT NULL THEN
            SELECT k.version, k.digest INTO found_version, found_digest
            FROM {SCHEMA}.idempotency_keys k
            WHERE k.namespace = p_namespace AND k.thread_id = p_thread_id
                AND k.key = p_key
                AND k.created_at > now() - make_interval(secs => p_key_ttl);
            IF FOUND THEN
                RETURN QUERY SELECT current_version, found_version, found_digest,
                    NULL::bigint, NULL::bigint, NULL::bigint, NULL::bytea, NULL::json, NULL::tid;
                RETURN;
            END IF;
        END IF;
        IF p_from_end IS NULL THEN
            RETURN QUERY SELECT current_version, NULL::bigint, NULL::bytea, count(*),
                NULL::bigint, NULL::bigint, NULL::bytea, NULL::json, NULL::tid
            FROM {SCHEMA}.messages m
            WHERE m.namespace = p_namespace AND m.thread_id = p_thread_id;
            RETURN;
        END IF;
        RETURN QUERY SELECT current_version, NULL::bigint, NULL::bytea, NULL::bigint,
            NULL::bigint, NULL::bigint, NULL::bytea, NULL::json, NULL::tid;
        IF p_from_end THEN
            RETURN QUERY SELECT NULL::bigint, NULL::bigint, NULL::bytea, NULL::bigint,
                m.seq, coalesce(m.anchor, m.seq), m.frac, m.payload, m.ctid
            FROM {SCHEMA}.messages m
            WHERE m.namespace = p_namespace AND m.thread_id = p_thread_id
            ORDER BY coalesce(m.anchor, m.seq) DESC, m.frac DESC
            OFFSET p_offset LIMIT p_limit;
        ELSE
            RETURN QUERY SELECT NULL::bigint, NULL::bigint, NULL::bytea, NULL::bigint,
                m.seq, coalesce(m.anchor, m.seq), m.frac, m.payload, m.ctid
            FROM {SCHEMA}.messages m
            WHERE m.namespace = p_namespace AND m.thread_id = p_thread_id
            ORDER BY coalesce(m.anchor, m.seq), m.frac
            OFFSET p_offset LIMIT p_limit;
        END IF;
    END
    $$;

    -- One round trip: both thread rows are locked (the source's shared, the
    -- target's exclusive) in thread id order, so two forks between the same two
    -- threads cannot deadlock; the source's rows and metadata then stay as they are.
    CREATE FUNCTION {SCHEMA}.fork_thread(
        p_namespace text, p_source text, p_target text, p_at bigint
    ) RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE
        source_version bigint;
        source_rewritten bigint;
        target_version bigint;
        copied_through bigint;
        forked bigint;
    BEGIN
        PERFORM set_config('{INTERNAL_FLAG}', 'on', true);
        IF p_source < p_target THEN
            SELECT t.version, t.rewritten_at INTO source_version, source_rewritten
            FROM {SCHEMA}.threads t
            WHERE t.namespace = p_namespace AND t.thread_id = p_source
            FOR SHARE;
        END IF;
        INSERT INTO {SCHEMA}.threads AS t (namespace, thread_id)
        VALUES (p_namespace, p_target)
        ON CONFLICT (namespace, thread_id) DO UPDATE SET version = t.version
        RETURNING t.version INTO target_version;
        IF p_source > p_target THEN
            SELECT t.version, t.rewritten_at INTO source_version, source_rewritten
            FROM {SCHEMA}.threads t
            WHERE t.namespace = p_namespace AND t.thread_id = p_source
            FOR SHARE;
        END IF;
        -- No source row: a thread never written, at version 0.
        source_version := coalesce(source_version, 0);
        source_rewritten := coalesce(source_rewritten, 0);
        copied_through := coalesce(p_at, source_version);
        IF p_at IS NOT NULL AND (p_at > source_version OR p_at < source_rewritten) THEN
            RAISE EXCEPTION USING ERRCODE = '{FORK_VERSION_STATE}',
                MESSAGE = source_version::text || ' ' || source_rewritten::text;
        END IF;
        IF EXISTS (SELECT FROM {SCHEMA}.messages m
                   WHERE m.namespace = p_namespace AND m.thread_id = p_target) THEN
            RAISE EXCEPTION USING ERRCODE = '{THREAD_EXISTS_STATE}',
                MESSAGE = target_version::text;
        END IF;
        forked := greatest(copied_through, target_version + 1);
        UPDATE {SCHEMA}.threads t
        SET version = forked, cleared_through = 0, rewritten_at = forked, updated_at = now()
        WHERE t.namespace = p_namespace AND t.thread_id = p_target;
        INSERT INTO {SCHEMA}.messages (namespace, thread_id, seq, anchor, frac, payload, tokens)
        SELECT m.namespace, p_target, m.seq, m.anchor, m.frac, m.payload, m.tokens
        FROM {SCHEMA}.messages m
        WHERE m.namespace = p_namespace AND m.thread_id = p_source
            AND m.seq <= copied_through;
        DELETE FROM {SCHEMA}.idempotency_keys k
        WHERE k.namespace = p_namespace AND k.thread_id = p_target;
        DELETE FROM {SCHEMA}.thread_metadata md
        WHERE md.namespace = p_namespace AND md.thread_id = p_target;
        INSERT INTO {SCHEMA}.thread_metadata (namespace, thread_id, key, value)
        SELECT md.namespace, p_target, md.key, md.value
        FROM {SCHEMA}.thread_metadata md
        WHERE md.namespace = p_namespace AND md.thread_id = p_source;
        PERFORM set_config('{INTERNAL_FLAG}', 'off', true);
        RETURN forked;
    END
    $$;
    """,
    # Retention. A thread whose expires_at has passed reads as deleted at its version
    # + 1, and the next write to it deletes it at that version first (erase_thread,
    # under the writer's row lock), as does the sweep (the index finds a namespace's
    # expired threads, oldest first). Writes take the retention that extends the expiry
    # in new function versions: append with a ninth argument, splice_begin (splice_rows
    # with the expiry in its header), fork_thread with a fifth. The previous release's
    # versions (append's 8 arguments, splice_rows, fork_thread's 4) are replaced by
    # calls of the new ones without retention, so its processes delete expired threads
    # before writing too; delete_thread's body now deletes the metadata as well and
    # erases what reads as deleted (a metadata-only thread, an expired one, one with
    # an expiry).
    f"""
    ALTER TABLE {SCHEMA}.threads ADD COLUMN expires_at timestamptz;
    CREATE INDEX threads_expiry ON {SCHEMA}.threads (namespace, expires_at)
        WHERE expires_at IS NOT NULL;

    -- Delete a thread's messages, idempotency keys and metadata at a version of its
    -- own (p_version + 1, returned). The caller holds the thread's row lock and has set
    -- the internal flag, so the message deletes are not external changes.
    CREATE FUNCTION {SCHEMA}.erase_thread(
        p_namespace text, p_thread_id text, p_version bigint
    ) RETURNS bigint LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE {SCHEMA}.threads t
        SET version = p_version + 1, cleared_through = p_version + 1,
            rewritten_at = p_version + 1, expires_at = NULL, updated_at = now()
        WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id;
        DELETE FROM {SCHEMA}.messages m
        WHERE m.namespace = p_namespace AND m.thread_id = p_thread_id;
        DELETE FROM {SCHEMA}.idempotency_keys k
        WHERE k.namespace = p_namespace AND k.thread_id = p_thread_id;
        DELETE FROM {SCHEMA}.thread_metadata md
        WHERE md.namespace = p_namespace AND md.thread_id = p_thread_id;
        RETURN p_version + 1;
    END
    $$;
    """
    + _append_function(tokens=True, key_ttl=True, retention=True)
    + f"""
    CREATE OR REPLACE FUNCTION {SCHEMA}.append(
        p_namespace text, p_thread_id text, p_payloads json[], p_tokens jsonb[],
        p_expected bigint, p_key text, p_digest bytea, p_key_ttl double precision
    ) RETURNS TABLE (version bigint, applied boolean)
    LANGUAGE sql AS $$
        SELECT a.version, a.applied FROM {SCHEMA}.append(
            p_namespace, p_thread_id, p_payloads, p_tokens, p_expected, p_key, p_digest,
            p_key_ttl, NULL) a
    $$;

    -- Nothing to delete (no row; deleted already, with no metadata or expiry): the
    -- version stays. Anything else, an expired thread included, is erased.
    CREATE OR REPLACE FUNCTION {SCHEMA}.delete_thread(p_namespace text, p_thread_id text)
    RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE
        current_version bigint;
        cleared bigint;
        expiry timestamptz;
    BEGIN
        -- Decide under the row lock: a concurrent append must be fully before or after.
        SELECT t.version, t.cleared_through, t.expires_at INTO current_version, cleared, expiry
        FROM {SCHEMA}.threads t
        WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id
        FOR UPDATE;
        IF NOT FOUND THEN
            RETURN 0;
        END IF;
        IF current_version = cleared AND expiry IS NULL AND NOT EXISTS (
            SELECT FROM {SCHEMA}.thread_metadata md
            WHERE md.namespace = p_namespace AND md.thread_id = p_thread_id
        ) THEN
            RETURN current_version;
        END IF;
        PERFORM set_config('{INTERNAL_FLAG}', 'on', true);
        current_version := {SCHEMA}.erase_thread(p_namespace, p_thread_id, current_version);
        PERFORM set_config('{INTERNAL_FLAG}', 'off', true);
        RETURN current_version;
    END
    $$;

    -- splice_rows, with the thread's expiry (seconds since the epoch) and whether it
    -- was erased (it had expired: a splice that writes nothing still commits that) in
    -- the header, after `total`. The retention is the splice's own write (SPLICE).
    CREATE FUNCTION {SCHEMA}.splice_begin(
        p_namespace text, p_thread_id text, p_key text, p_key_ttl double precision,
        p_from_end boolean, p_offset bigint, p_limit bigint
    ) RETURNS TABLE (
        version bigint, prior_version bigint, prior_digest bytea, total bigint,
        expires_at double precision, erased boolean,
        seq bigint, place bigint, frac bytea, payload json, row_id tid
    )
    LANGUAGE plpgsql SET enable_sort = off AS $$
    DECLARE
        current_version bigint;
        expiry timestamptz;
        was_erased boolean := false;
        found_version bigint;
        found_digest bytea;
    BEGIN
        -- The splice's own deletes and inserts are not external changes.
        PERFORM set_config('{INTERNAL_FLAG}', 'on', true);
        SELECT t.version, t.expires_at INTO current_version, expiry
        FROM {SCHEMA}.threads t
        WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id
        FOR UPDATE;
        IF NOT FOUND THEN  -- a new thread: its row, made now, is locked all the same
            INSERT INTO {SCHEMA}.threads AS t (namespace, thread_id)
            VALUES (p_namespace, p_thread_id)
            ON CONFLICT (namespace, thread_id) DO UPDATE SET version = t.version
            RETURNING t.version, t.expires_at INTO current_version, expiry;
        END IF;
        IF expiry <= now() THEN
            current_version := {SCHEMA}.erase_thread(p_namespace, p_thread_id, current_version);
            expiry := NULL;
            was_erased := true;
        END IF;
        IF p_key IS NOT NULL THEN
            SELECT k.version, k.digest INTO found_version, found_digest
            FROM {SCHEMA}.idempotency_keys k
            WHERE k.namespace = p_namespace AND k.thread_id = p_thread_id
                AND k.key = p_key
                AND k.created_at > now() - make_interval(secs => p_key_ttl);
            IF FOUND THEN
                RETURN QUERY SELECT current_version, found_version, found_digest,
                    NULL::bigint, date_part('epoch', expiry), was_erased,
                    NULL::bigint, NULL::bigint, NULL::bytea, NULL::json, NULL::tid;
                RETURN;
            END IF;
        END IF;
        IF p_from_end IS NULL THEN
            RETURN QUERY SELECT current_version, NULL::bigint, NULL::bytea, count(*),
                date_part('epoch', expiry), was_erased,
                NULL::bigint, NULL::bigint, NULL::bytea, NULL::json, NULL::tid
            FROM {SCHEMA}.messages m
            WHERE m.namespace = p_namespace AND m.thread_id = p_thread_id;
            RETURN;
        END IF;
        RETURN QUERY SELECT current_version, NULL::bigint, NULL::bytea, NULL::bigint,
            date_part('epoch', expiry), was_erased,
            NULL::bigint, NULL::bigint, NULL::bytea, NULL::json, NULL::tid;
        IF p_from_end THEN
            RETURN QUERY SELECT NULL::bigint, NULL::bigint, NULL::bytea, NULL::bigint,
                NULL::double precision, NULL::boolean,
                m.seq, coalesce(m.anchor, m.seq), m.frac, m.payload, m.ctid
            FROM {SCHEMA}.messages m
            WHERE m.namespace = p_namespace AND m.thread_id = p_thread_id
            ORDER BY coalesce(m.anchor, m.seq) DESC, m.frac DESC
            OFFSET p_offset LIMIT p_limit;
        ELSE
            RETURN QUERY SELECT NULL::bigint, NULL::bigint, NULL::bytea, NULL::bigint,
                NULL::double precision, NULL::boolean,
                m.seq, coalesce(m.anchor, m.seq), m.frac, m.payload, m.ctid
            FROM {SCHEMA}.messages m
            WHERE m.namespace = p_namespace AND m.thread_id = p_thread_id
            ORDER BY coalesce(m.anchor, m.seq), m.frac
            OFFSET p_offset LIMIT p_limit;
        END IF;
    END
    $$;

    CREATE OR REPLACE FUNCTION {SCHEMA}.splice_rows(
        p_namespace text, p_thread_id text, p_key text, p_key_ttl double precision,
        p_from_end boolean, p_offset bigint, p_limit bigint
    ) RETURNS TABLE (
        version bigint, prior_version bigint, prior_digest bytea, total bigint,
        seq bigint, place bigint, frac bytea, payload json, row_id tid
    )
    LANGUAGE sql AS $$
        SELECT s.version, s.prior_version, s.prior_digest, s.total,
            s.seq, s.place, s.frac, s.payload, s.row_id
        FROM {SCHEMA}.splice_begin(
            p_namespace, p_thread_id, p_key, p_key_ttl, p_from_end, p_offset, p_limit) s
    $$;

    -- fork_thread with the target's retention (NULL: it never expires; the source's
    -- expiry is not copied). An expired source or target is erased first. The source's
    -- lock is shared unless it looked expired before it was locked (its erase needs the
    -- exclusive lock); if it expired in between (update_thread), a shared lock is all
    -- this fork holds, which it does not upgrade (two forks of the source would
    -- deadlock): the source is taken as the deleted thread it reads as, and left to the
    -- next write or the sweep to erase.
    CREATE FUNCTION {SCHEMA}.fork_thread(
        p_namespace text, p_source text, p_target text, p_at bigint,
        p_retention double precision
    ) RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE
        source_version bigint;
        source_rewritten bigint;
        source_expiry timestamptz;
        source_exclusive boolean;
        source_gone boolean := false;
        target_version bigint;
        target_expiry timestamptz;
        copied_through bigint;
        forked bigint;
    BEGIN
        PERFORM set_config('{INTERNAL_FLAG}', 'on', true);
        SELECT coalesce(t.expires_at <= now(), false) INTO source_exclusive
        FROM {SCHEMA}.threads t
        WHERE t.namespace = p_namespace AND t.thread_id = p_source;
        IF p_source < p_target THEN
            {_LOCK_SOURCE}
        END IF;
        INSERT INTO {SCHEMA}.threads AS t (namespace, thread_id)
        VALUES (p_namespace, p_target)
        ON CONFLICT (namespace, thread_id) DO UPDATE SET version = t.version
        RETURNING t.version, t.expires_at INTO target_version, target_expiry;
        IF p_source > p_target THEN
            {_LOCK_SOURCE}
        END IF;
        IF source_expiry <= now() THEN
            IF source_exclusive THEN
                source_version := {SCHEMA}.erase_thread(p_namespace, p_source, source_version);
            ELSE
                source_version := source_version + 1;
                source_gone := true;
            END IF;
            source_rewritten := source_version;
        END IF;
        IF target_expiry <= now() THEN
            target_version := {SCHEMA}.erase_thread(p_namespace, p_target, target_version);
        END IF;
        -- No source row: a thread never written, at version 0.
        source_version := coalesce(source_version, 0);
        source_rewritten := coalesce(source_rewritten, 0);
        copied_through := coalesce(p_at, source_version);
        IF p_at IS NOT NULL AND (p_at > source_version OR p_at < source_rewritten) THEN
            RAISE EXCEPTION USING ERRCODE = '{FORK_VERSION_STATE}',
                MESSAGE = source_version::text || ' ' || source_rewritten::text;
        END IF;
        IF EXISTS (SELECT FROM {SCHEMA}.messages m
                   WHERE m.namespace = p_namespace AND m.thread_id = p_target) THEN
            RAISE EXCEPTION USING ERRCODE = '{THREAD_EXISTS_STATE}',
                MESSAGE = target_version::text;
        END IF;
        forked := greatest(copied_through, target_version + 1);
        UPDATE {SCHEMA}.threads t
        SET version = forked, cleared_through = 0, rewritten_at = forked,
            expires_at = {_extended("NULL::timestamptz", "p_retention")}, updated_at = now()
        WHERE t.namespace = p_namespace AND t.thread_id = p_target;
        INSERT INTO {SCHEMA}.messages (namespace, thread_id, seq, anchor, frac, payload, tokens)
        SELECT m.namespace, p_target, m.seq, m.anchor, m.frac, m.payload, m.tokens
        FROM {SCHEMA}.messages m
        WHERE m.namespace = p_namespace AND m.thread_id = p_source
            AND m.seq <= copied_through AND NOT source_gone;
        DELETE FROM {SCHEMA}.idempotency_keys k
        WHERE k.namespace = p_namespace AND k.thread_id = p_target;
        DELETE FROM {SCHEMA}.thread_metadata md
        WHERE md.namespace = p_namespace AND md.thread_id = p_target;
        INSERT INTO {SCHEMA}.thread_metadata (namespace, thread_id, key, value)
        SELECT md.namespace, p_target, md.key, md.value
        FROM {SCHEMA}.thread_metadata md
        WHERE md.namespace = p_namespace AND md.thread_id = p_source AND NOT source_gone;
        PERFORM set_config('{INTERNAL_FLAG}', 'off', true);
        RETURN forked;
    END
    $$;

    CREATE OR REPLACE FUNCTION {SCHEMA}.fork_thread(
        p_namespace text, p_source text, p_target text, p_at bigint
    ) RETURNS bigint LANGUAGE sql AS $$
        SELECT {SCHEMA}.fork_thread(p_namespace, p_source, p_target, p_at, NULL)
    $$;

    -- update_thread's first statement: the thread's row lock (the row made if new), an
    -- expired thread erased, then the expiry set (p_expires_at, seconds since the
    -- epoch) or extended (p_retention).
    CREATE FUNCTION {SCHEMA}.lock_thread(
        p_namespace text, p_thread_id text, p_expires_at double precision,
        p_retention double precision
    ) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        current_version bigint;
        expiry timestamptz;
        extended timestamptz;
    BEGIN
        INSERT INTO {SCHEMA}.threads AS t (namespace, thread_id)
        VALUES (p_namespace, p_thread_id)
        ON CONFLICT (namespace, thread_id) DO UPDATE SET updated_at = now()
        RETURNING t.version, t.expires_at INTO current_version, expiry;
        IF expiry <= now() THEN
            PERFORM set_config('{INTERNAL_FLAG}', 'on', true);
            PERFORM {SCHEMA}.erase_thread(p_namespace, p_thread_id, current_version);
            PERFORM set_config('{INTERNAL_FLAG}', 'off', true);
            expiry := NULL;
        END IF;
        IF p_expires_at IS NOT NULL THEN
            extended := to_timestamp(p_expires_at);
        ELSE  -- (an IF's condition can't hold a CASE: its THEN would end the condition)
            extended := {_extended("expiry", "p_retention")};
        END IF;
        IF extended IS DISTINCT FROM expiry THEN
            UPDATE {SCHEMA}.threads t SET expires_at = extended
            WHERE t.namespace = p_namespace AND t.thread_id = p_thread_id;
        END IF;
    END
    $$;

    -- Delete up to p_limit expired threads of a namespace, oldest expiry first, as
    -- erase_thread does; returns each one's id and new version. A thread whose row a
    -- writer holds is skipped: that writer deletes it (or the next sweep does).
    CREATE FUNCTION {SCHEMA}.sweep_expired(p_namespace text, p_limit bigint)
    RETURNS TABLE (thread_id text, version bigint) LANGUAGE plpgsql AS $$
    DECLARE
        due text[];
    BEGIN
        SELECT array_agg(d.thread_id ORDER BY d.expires_at) INTO due FROM (
            SELECT t.thread_id, t.expires_at FROM {SCHEMA}.threads t
            WHERE t.namespace = p_namespace AND t.expires_at <= now()
            ORDER BY t.expires_at LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) d;
        IF due IS NULL THEN
            RETURN;
        END IF;
        PERFORM set_config('{INTERNAL_FLAG}', 'on', true);
        RETURN QUERY WITH moved AS (
            UPDATE {SCHEMA}.threads t
            SET version = t.version + 1, cleared_through = t.version + 1,
                rewritten_at = t.version + 1, expires_at = NULL, updated_at = now()
            WHERE t.namespace = p_namespace AND t.thread_id = ANY(due)
            RETURNING t.thread_id, t.version
        )
        SELECT m.thread_id, m.version
        FROM unnest(due) WITH ORDINALITY AS u(id, n)
        JOIN moved m ON m.thread_id = u.id
        ORDER BY u.n;
        DELETE FROM {SCHEMA}.messages m
        WHERE m.namespace = p_namespace AND m.thread_id = ANY(due);
        DELETE FROM {SCHEMA}.idempotency_keys k
        WHERE k.namespace = p_namespace AND k.thread_id = ANY(due);
        DELETE FROM {SCHEMA}.thread_metadata md
        WHERE md.namespace = p_namespace AND md.thread_id = ANY(due);
        PERFORM set_config('{INTERNAL_FLAG}', 'off', true);
    END
    $$;
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

APPEND: Final = (
    f"SELECT version, applied, expires_at FROM {SCHEMA}.append($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
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
# A thread whose expiry has passed reads as deleted at its version + 1 (the next write
# or the sweep deletes it at that version): no messages, metadata or expiry.
_VISIBLE_VERSION: Final = "t.version + CASE WHEN t.expires_at <= now() THEN 1 ELSE 0 END"
_LIVE: Final = "(t.expires_at IS NULL OR t.expires_at > now())"
#: The thread's expiry in seconds since the epoch, NULL if none (or passed).
_EXPIRY: Final = "CASE WHEN t.expires_at > now() THEN date_part('epoch', t.expires_at) END"
VERSION: Final = f"""
SELECT {_VISIBLE_VERSION} FROM {SCHEMA}.threads t WHERE t.namespace = $1 AND t.thread_id = $2
"""
# One statement, so the version and the rows come from the same snapshot. A thread
# with no row yields no rows (version 0); with no messages, one row of NULLs. Rows
# come in thread order, by the order key coalesce(anchor, seq), frac (store/_order.py),
# sorted after the join (a nested loop's output keeps its outer side's order only):
# a custom plan reads the thread along the order index, a generic one may take the
# primary key's range seq > $3.
READ: Final = f"""
SELECT {_VISIBLE_VERSION}, m.seq, m.payload, m.tokens, {_EXPIRY}
FROM {SCHEMA}.threads t
LEFT JOIN {SCHEMA}.messages m
    ON m.namespace = t.namespace AND m.thread_id = t.thread_id AND m.seq > $3 AND {_LIVE}
WHERE t.namespace = $1 AND t.thread_id = $2
ORDER BY coalesce(m.anchor, m.seq), m.frac
"""
# The last $4 rows, read backwards along the order index (none, and no scan, if the
# thread has expired: the condition on it alone filters the subquery once).
READ_LAST: Final = f"""
SELECT {_VISIBLE_VERSION}, m.seq, m.payload, m.tokens, {_EXPIRY}
FROM {SCHEMA}.threads t
LEFT JOIN LATERAL (
    SELECT seq, payload, tokens, coalesce(anchor, seq) AS place, frac
    FROM {SCHEMA}.messages
    WHERE namespace = t.namespace AND thread_id = t.thread_id AND seq > $3 AND {_LIVE}
    ORDER BY coalesce(anchor, seq) DESC, frac DESC LIMIT $4
) m ON true
WHERE t.namespace = $1 AND t.thread_id = $2
ORDER BY m.place, m.frac
"""
# A splice is one transaction: SPLICE_BEGIN (the lock, an expired thread's delete, the
# checks and the rows that locate it; again for the rows if it first asked for the
# count), then SPLICE, which writes it: removed rows by seq, new rows at seqs above the
# old version with the order keys store/_order.py gave them, the thread's version, its
# expiry extended by the retention ($13) and the key's use.
SPLICE_BEGIN: Final = f"SELECT * FROM {SCHEMA}.splice_begin($1, $2, $3, $4, $5, $6, $7)"
# The rows sharing an anchor, when a splice must respace them (store/_order.py).
RUN: Final = f"""
SELECT seq, frac, ctid FROM {SCHEMA}.messages
WHERE namespace = $1 AND thread_id = $2 AND coalesce(anchor, seq) = $3
ORDER BY frac
"""
SPLICE: Final = f"""
WITH removed AS (
    -- By the rows' ctids ($12, read under the thread's lock, which every writer of
    -- its rows takes first), and no condition an index could serve, so the plan is a
    -- TID scan whatever the statistics say (with the thread's ids here, a generic plan
    -- may walk all of its rows instead). What was deleted is checked below.
    DELETE FROM {SCHEMA}.messages
    WHERE ctid = ANY($12::tid[]) AND seq = ANY($3::bigint[])
    RETURNING namespace, thread_id
), added AS (
    -- A NULL $8 unnests as no rows, which pads every message's tokens with NULL.
    INSERT INTO {SCHEMA}.messages (namespace, thread_id, seq, anchor, frac, payload, tokens)
    SELECT $1, $2, $4 + u.ordinality, u.anchor, u.frac, u.payload, u.tokens
    FROM unnest($5::bigint[], $6::bytea[], $7::json[], $8::jsonb[])
        WITH ORDINALITY AS u(anchor, frac, payload, tokens, ordinality)
), respaced AS (
    -- Rows of a run whose fracs were spread afresh (store/_order.py), by ctid.
    UPDATE {SCHEMA}.messages m SET frac = u.frac
    FROM unnest($14::tid[], $15::bytea[]) AS u(row_id, frac)
    WHERE m.ctid = u.row_id
), used AS (
    -- An expired key's row may still be there: this use replaces it.
    INSERT INTO {SCHEMA}.idempotency_keys AS k
        (namespace, thread_id, key, version, digest, created_at)
    SELECT $1, $2, $10::text, $9, $11, now() WHERE $10::text IS NOT NULL
    ON CONFLICT (namespace, thread_id, key) DO UPDATE
    SET version = excluded.version, digest = excluded.digest, created_at = excluded.created_at
), moved AS (
    UPDATE {SCHEMA}.threads t
    SET version = $9, rewritten_at = $9, updated_at = now(),
        expires_at = {_extended("t.expires_at", "$13::double precision")}
    WHERE t.namespace = $1 AND t.thread_id = $2
    RETURNING date_part('epoch', t.expires_at) AS expiry
)
SELECT count(*) FILTER (WHERE namespace = $1 AND thread_id = $2), count(*),
    (SELECT expiry FROM moved)
FROM removed
"""
FORK: Final = f"SELECT {SCHEMA}.fork_thread($1, $2, $3, $4, $5)"
# purge_namespace: rows first, thread rows last, in one transaction under the flag.
INTERNAL_ON: Final = f"SELECT set_config('{INTERNAL_FLAG}', 'on', true)"
PURGE_ROWS: Final = (
    f"DELETE FROM {SCHEMA}.messages WHERE namespace = $1",
    f"DELETE FROM {SCHEMA}.idempotency_keys WHERE namespace = $1",
    f"DELETE FROM {SCHEMA}.thread_metadata WHERE namespace = $1",
)
# One statement: the version, the count and the metadata come from one snapshot (an
# expired thread's are not counted: it reads as deleted).
THREAD_INFO: Final = f"""
SELECT {_VISIBLE_VERSION}, t.created_at, t.updated_at,
    CASE WHEN {_LIVE} THEN (SELECT count(*) FROM {SCHEMA}.messages m
        WHERE m.namespace = t.namespace AND m.thread_id = t.thread_id) ELSE 0 END,
    CASE WHEN {_LIVE} THEN ARRAY(SELECT md.key FROM {SCHEMA}.thread_metadata md
        WHERE md.namespace = t.namespace AND md.thread_id = t.thread_id ORDER BY md.key)
        ELSE '{{}}' END,
    CASE WHEN {_LIVE} THEN ARRAY(SELECT md.value FROM {SCHEMA}.thread_metadata md
        WHERE md.namespace = t.namespace AND md.thread_id = t.thread_id ORDER BY md.key)
        ELSE '{{}}' END,
    CASE WHEN {_LIVE} THEN t.expires_at END
FROM {SCHEMA}.threads t
WHERE t.namespace = $1 AND t.thread_id = $2
"""
# update_thread: the thread row (made if new) is locked first, as every writer does; an
# expired thread is deleted, and the expiry set ($3) or extended by the retention ($4).
LOCK_THREAD: Final = f"SELECT {SCHEMA}.lock_thread($1, $2, $3, $4)"
SWEEP_EXPIRED: Final = f"SELECT thread_id, version FROM {SCHEMA}.sweep_expired($1, $2)"
REMOVE_METADATA: Final = f"""
DELETE FROM {SCHEMA}.thread_metadata
WHERE namespace = $1 AND thread_id = $2 AND key = ANY($3::text[])
"""
# Returns how many keys the thread has afterwards: the statement sees the table as it
# was before it, so the other keys are counted beside those it wrote.
SET_METADATA: Final = f"""
WITH written AS (
    INSERT INTO {SCHEMA}.thread_metadata (namespace, thread_id, key, value)
    SELECT $1, $2, u.key, u.value FROM unnest($3::text[], $4::text[]) AS u(key, value)
    ON CONFLICT (namespace, thread_id, key) DO UPDATE SET value = excluded.value
    RETURNING key
)
SELECT (SELECT count(*) FROM written) + (
    SELECT count(*) FROM {SCHEMA}.thread_metadata m
    WHERE m.namespace = $1 AND m.thread_id = $2 AND m.key <> ALL($3::text[])
)
"""
PURGE_THREADS: Final = f"DELETE FROM {SCHEMA}.threads WHERE namespace = $1"
STORED_BYTES: Final = f"""
SELECT coalesce(sum(octet_length(payload::text)), 0)::bigint FROM {SCHEMA}.messages
WHERE namespace = $1
"""

LIST: Final = f"""
SELECT t.thread_id FROM {SCHEMA}.threads t
WHERE t.namespace = $1 AND t.thread_id > $2 AND {_LIVE}
    AND (t.version > t.cleared_through OR EXISTS (
        SELECT FROM {SCHEMA}.thread_metadata m
        WHERE m.namespace = t.namespace AND m.thread_id = t.thread_id))
"""
#: One more condition of LIST per metadata pair (``{key}``, ``{value}``: parameter numbers).
LIST_FILTER: Final = f"""
    AND t.thread_id IN (SELECT m.thread_id FROM {SCHEMA}.thread_metadata m
        WHERE m.namespace = $1 AND m.key = ${{key}} AND m.value = ${{value}})
"""
# Encryption at rest. A fork whose copy is rewritten (sealed afresh for the new thread):
# its rows, read inside the fork's transaction, then written back by seq under the flag.
FORKED_ROWS: Final = f"""
SELECT seq, payload FROM {SCHEMA}.messages WHERE namespace = $1 AND thread_id = $2 ORDER BY seq
"""
REWRITE_ROWS: Final = f"""
UPDATE {SCHEMA}.messages m SET payload = u.payload
FROM unnest($3::bigint[], $4::json[]) AS u(seq, payload)
WHERE m.namespace = $1 AND m.thread_id = $2 AND m.seq = u.seq
"""
# rotate-data's scan: along the primary key (all of it, or one namespace's stretch),
# after a place, leaving out the rows whose payload starts with $4 (sealed under the
# newest key already; '' leaves out none).
_SCAN: Final = f"""
SELECT namespace, thread_id, seq, payload FROM {SCHEMA}.messages
WHERE {{where}} AND ($4 = '' OR NOT starts_with(payload::text, $4))
ORDER BY namespace, thread_id, seq LIMIT $5
"""
SCAN_PAYLOADS: Final = _SCAN.format(where="(namespace, thread_id, seq) > ($1, $2, $3)")
SCAN_NAMESPACE_PAYLOADS: Final = _SCAN.format(
    where="namespace = $1 AND (thread_id, seq) > ($2, $3)"
)
# rotate-data's swap: the threads' row locks first, in id order, as every writer of a
# thread takes its lock before its rows (so no deadlock); then each payload replaced if
# it is still the one scanned (json has no equality: compared as text).
LOCK_THREADS: Final = f"""
SELECT FROM {SCHEMA}.threads t
JOIN unnest($1::text[], $2::text[]) AS u(namespace, thread_id)
    ON t.namespace = u.namespace AND t.thread_id = u.thread_id
ORDER BY t.namespace, t.thread_id
FOR NO KEY UPDATE OF t
"""
SWAP_PAYLOADS: Final = f"""
UPDATE {SCHEMA}.messages m SET payload = u.new
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::json[], $5::json[])
    AS u(namespace, thread_id, seq, old, new)
WHERE m.namespace = u.namespace AND m.thread_id = u.thread_id AND m.seq = u.seq
    AND m.payload::text = u.old::text
"""
