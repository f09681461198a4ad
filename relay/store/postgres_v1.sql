-- PostgreSQL schema of the relay, version 1 (relay/store/postgres.py applies it once and
-- records it in schema_version; a change goes into postgres_v2.sql, never into this file).
--
-- Tag values and d tags are bytea (their UTF-8): PostgreSQL text cannot hold U+0000, which
-- a Nostr tag value may. Ids and pubkeys are 32-byte bytea, whose order is the order of
-- their lowercase hex, so "ties by the lowest id" compares them directly.

CREATE TABLE events (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         bytea   NOT NULL UNIQUE,
    pubkey     bytea   NOT NULL,
    created_at bigint  NOT NULL,
    kind       integer NOT NULL,
    d_tag      bytea,                     -- '' or the d tag for replaceable/addressable, else NULL
    expiration bigint,                    -- NIP-40, NULL when the event never expires
    raw        bytea   NOT NULL,          -- the event's compact JSON, spliced into replies
    search     tsvector                   -- NIP-50 words of the content; NULL with search off
);

-- One index per common filter shape, each ordered for "newest first".
CREATE INDEX events_by_time        ON events (created_at DESC, id);
CREATE INDEX events_by_author      ON events (pubkey, created_at DESC);
CREATE INDEX events_by_kind        ON events (kind, created_at DESC);
CREATE INDEX events_by_author_kind ON events (pubkey, kind, created_at DESC);
-- One version per address: the advisory locks in relay_save_batch make it so; this
-- constraint turns a bug there into a failed batch instead of two current versions.
CREATE UNIQUE INDEX events_by_address ON events (pubkey, kind, d_tag) WHERE d_tag IS NOT NULL;
CREATE INDEX events_by_expiration  ON events (expiration) WHERE expiration IS NOT NULL;
-- Rows written with search off hold NULL and cost this index nothing.
CREATE INDEX events_by_words ON events USING gin (search) WHERE search IS NOT NULL;

-- Single-letter tags (the ones #x filters match), created_at copied for ordered scans.
CREATE TABLE tags (
    seq        bigint NOT NULL,
    name       text   NOT NULL,
    value      bytea  NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX tags_by_value ON tags (name, value, created_at DESC);
CREATE INDEX tags_by_event ON tags (seq);

-- NIP-09 tombstones: a deleted event stays deleted when it is published again.
CREATE TABLE deleted_ids (
    id     bytea NOT NULL,
    pubkey bytea NOT NULL,                -- who asked; only the author's request applies
    PRIMARY KEY (id, pubkey)
);

CREATE TABLE deleted_addresses (
    pubkey bytea   NOT NULL,
    kind   integer NOT NULL,
    d_tag  bytea   NOT NULL,
    until  bigint  NOT NULL,              -- versions created at or before this are deleted
    PRIMARY KEY (pubkey, kind, d_tag)
);

-- NIP-62 tombstones: events of this pubkey (and gift wraps to it) created at or before
-- `until` were erased by a request to vanish and are refused when published again.
CREATE TABLE vanished (
    pubkey bytea  PRIMARY KEY,
    until  bigint NOT NULL
);

-- Facts about the database as a whole, such as whether every event has its search words.
CREATE TABLE relay_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Erase events by seq, their tags with them.
CREATE FUNCTION relay_erase(gone bigint[]) RETURNS void
LANGUAGE sql SET search_path FROM CURRENT AS $$
    DELETE FROM tags WHERE seq = ANY(gone);
    DELETE FROM events WHERE seq = ANY(gone);
$$;

-- One batch of events, applied in order inside the caller's transaction: the same rules,
-- in the same order, as relay/store/memory.py and sqlite_writes.py. Returns one outcome
-- per event: 0 stored, 1 duplicate, 2 stale, 3 deleted, 4 vanished.
--
-- Per-event lists arrive flattened, with each event's end index (1-based, inclusive):
-- tags (name, value) in tag_*; refs: a kind 5's `e` ids, a kind 1059's `p` pubkeys;
-- addrs (kind, d): a kind 5's `a` addresses of its own author.
--
-- lock_keys: one key per pubkey whose rules the batch reads or writes (every author, and
-- the recipients of gift wraps), sorted. Every writer takes its keys in that order before
-- anything else, so two batches touching one pubkey run one after the other, whatever
-- instance sent them, and two batches never wait on each other in a cycle.
CREATE FUNCTION relay_save_batch(
    lock_keys bigint[],
    ids bytea[], pubkeys bytea[], created bigint[], kinds integer[], d_tags bytea[],
    expirations bigint[], raws bytea[], searches text[],
    tag_ends integer[], tag_names text[], tag_values bytea[],
    ref_ends integer[], refs bytea[],
    addr_ends integer[], addr_kinds integer[], addr_ds bytea[]
) RETURNS smallint[]
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    outcomes smallint[] := '{}';
    lock_key bigint;
    i integer;
    first_tag integer := 1;
    first_ref integer := 1;
    first_addr integer := 1;
    pk bytea;
    at bigint;
    until_at bigint;
    current_seq bigint;
    current_at bigint;
    current_id bytea;
    new_seq bigint;
    j integer;
BEGIN
    FOREACH lock_key IN ARRAY lock_keys LOOP
        PERFORM pg_advisory_xact_lock(lock_key);
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        IF i > 1 THEN
            first_tag := tag_ends[i - 1] + 1;
            first_ref := ref_ends[i - 1] + 1;
            first_addr := addr_ends[i - 1] + 1;
        END IF;
        pk := pubkeys[i];
        at := created[i];
        outcomes[i] := 0;
        IF EXISTS (SELECT 1 FROM events WHERE id = ids[i]) THEN
            outcomes[i] := 1;
            CONTINUE;
        END IF;
        -- Deleted by its author, or for a gift wrap by a recipient (NIP-59).
        IF kinds[i] <> 5 AND EXISTS (
            SELECT 1 FROM deleted_ids WHERE id = ids[i] AND (pubkey = pk
                OR (kinds[i] = 1059 AND pubkey = ANY(refs[first_ref : ref_ends[i]])))) THEN
            outcomes[i] := 3;
            CONTINUE;
        END IF;
        IF EXISTS (SELECT 1 FROM vanished WHERE pubkey = pk AND until >= at)
            OR (kinds[i] = 1059 AND EXISTS (
                SELECT 1 FROM vanished
                WHERE pubkey = ANY(refs[first_ref : ref_ends[i]]) AND until >= at)) THEN
            outcomes[i] := 4;
            CONTINUE;
        END IF;
        IF kinds[i] = 62 THEN
            -- NIP-62: the author's events and the gift wraps to them, up to the request.
            PERFORM relay_erase(array(
                SELECT seq FROM events WHERE pubkey = pk AND created_at <= at
                UNION
                SELECT e.seq FROM tags t JOIN events e ON e.seq = t.seq
                WHERE t.name = 'p' AND t.value = convert_to(encode(pk, 'hex'), 'UTF8')
                    AND e.kind = 1059 AND e.created_at <= at));
            INSERT INTO vanished (pubkey, until) VALUES (pk, at)
            ON CONFLICT (pubkey) DO UPDATE SET until = greatest(vanished.until, excluded.until);
        END IF;
        IF d_tags[i] IS NOT NULL THEN
            SELECT until INTO until_at FROM deleted_addresses
            WHERE pubkey = pk AND kind = kinds[i] AND d_tag = d_tags[i];
            IF FOUND AND at <= until_at THEN
                outcomes[i] := 3;
                CONTINUE;
            END IF;
            SELECT seq, created_at, id INTO current_seq, current_at, current_id FROM events
            WHERE pubkey = pk AND kind = kinds[i] AND d_tag = d_tags[i];
            IF FOUND THEN
                -- Newest created_at wins; on a tie the lowest id.
                IF NOT (at > current_at OR (at = current_at AND ids[i] < current_id)) THEN
                    outcomes[i] := 2;
                    CONTINUE;
                END IF;
                PERFORM relay_erase(ARRAY[current_seq]);
            END IF;
        END IF;
        INSERT INTO events (id, pubkey, created_at, kind, d_tag, expiration, raw, search)
        VALUES (ids[i], pk, at, kinds[i], d_tags[i], expirations[i], raws[i],
                searches[i]::tsvector)
        RETURNING seq INTO new_seq;
        INSERT INTO tags (seq, name, value, created_at)
        SELECT new_seq, t.name, t.value, at
        FROM unnest(tag_names[first_tag : tag_ends[i]], tag_values[first_tag : tag_ends[i]])
            AS t(name, value);
        IF kinds[i] = 5 THEN
            -- NIP-09: the author's own events by id (a deletion itself cannot be deleted),
            -- and gift wraps addressed to the author (NIP-59).
            PERFORM relay_erase(array(
                SELECT e.seq FROM events e
                WHERE e.id = ANY(refs[first_ref : ref_ends[i]]) AND e.kind <> 5
                    AND (e.pubkey = pk OR (e.kind = 1059 AND EXISTS (
                        SELECT 1 FROM tags t WHERE t.seq = e.seq AND t.name = 'p'
                            AND t.value = convert_to(encode(pk, 'hex'), 'UTF8'))))));
            INSERT INTO deleted_ids (id, pubkey)
            SELECT r, pk FROM unnest(refs[first_ref : ref_ends[i]]) AS r
            ON CONFLICT DO NOTHING;
            FOR j IN first_addr .. addr_ends[i] LOOP
                PERFORM relay_erase(array(
                    SELECT seq FROM events
                    WHERE pubkey = pk AND kind = addr_kinds[j] AND d_tag = addr_ds[j]
                        AND created_at <= at AND kind <> 5));
                INSERT INTO deleted_addresses (pubkey, kind, d_tag, until)
                VALUES (pk, addr_kinds[j], addr_ds[j], at)
                ON CONFLICT (pubkey, kind, d_tag)
                DO UPDATE SET until = greatest(deleted_addresses.until, excluded.until);
            END LOOP;
        END IF;
    END LOOP;
    RETURN outcomes;
END;
$$;

-- Expired events, at most `most` of them, without waiting for rows a concurrent batch
-- holds (those go next time): a purge never waits on a writer, so it cannot deadlock
-- with one. Returns how many were erased.
CREATE FUNCTION relay_purge_expired(now bigint, most integer) RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    gone bigint[];
BEGIN
    gone := array(
        SELECT seq FROM events WHERE expiration IS NOT NULL AND expiration <= now
        LIMIT most FOR UPDATE SKIP LOCKED);
    PERFORM relay_erase(gone);
    RETURN coalesce(array_length(gone, 1), 0);
END;
$$;
