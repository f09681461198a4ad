-- PostgreSQL schema version 3: relay_save_batch also applies the NIP-86 moderation state
-- (postgres_v2.sql's table), so that an instance that has not yet heard of a ban another
-- one made (its NOTIFY takes a few milliseconds) cannot store what the ban refuses.
--
-- New outcomes: 5 a banned event id, 6 a banned pubkey, 7 a pubkey not on a non-empty
-- allowlist (pg_batch.OUTCOMES); the rest of the function is version 1's.
--
-- Ordering against a ban (relay/store/pg_moderation.py): a batch reads the table after it
-- holds its pubkeys' advisory locks and ROW SHARE on the table, until its commit. A pubkey
-- ban takes that pubkey's advisory lock, an event ban or an allowlist entry EXCLUSIVE on
-- the table (which conflicts with ROW SHARE, not with plain reads); either way the batch
-- commits before the change (whose erasure then removes what it stored) or reads the
-- table after the change committed (READ COMMITTED: a fresh snapshot per statement).

CREATE OR REPLACE FUNCTION relay_save_batch(
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
    banned_ids text[];
    banned_pks text[];
    allowlist boolean;
    allowed_pks text[];
BEGIN
    FOREACH lock_key IN ARRAY lock_keys LOOP
        PERFORM pg_advisory_xact_lock(lock_key);
    END LOOP;
    -- After the locks, so that a ban either waits for this batch's commit (and erases
    -- what it stored) or committed before these reads, which then see it.
    LOCK TABLE moderation IN ROW SHARE MODE;
    -- One probe of the primary key per event id and per pubkey (a join: an `= ANY` of
    -- the batch's keys sorts them first, twice as slow).
    banned_ids := array(SELECT m.key FROM unnest(ids) AS x JOIN moderation m
        ON m.list = 'banned_events' AND m.key = encode(x, 'hex'));
    banned_pks := array(SELECT m.key FROM unnest(pubkeys) AS x JOIN moderation m
        ON m.list = 'banned_pubkeys' AND m.key = encode(x, 'hex'));
    allowlist := EXISTS (SELECT 1 FROM moderation WHERE list = 'allowed_pubkeys');
    IF allowlist THEN
        allowed_pks := array(SELECT m.key FROM unnest(pubkeys) AS x JOIN moderation m
            ON m.list = 'allowed_pubkeys' AND m.key = encode(x, 'hex'));
    END IF;
    FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        IF i > 1 THEN
            first_tag := tag_ends[i - 1] + 1;
            first_ref := ref_ends[i - 1] + 1;
            first_addr := addr_ends[i - 1] + 1;
        END IF;
        pk := pubkeys[i];
        at := created[i];
        outcomes[i] := 0;
        -- NIP-86, in ModerationState.check's order; nothing to compare in the usual batch.
        IF banned_ids <> '{}' AND encode(ids[i], 'hex') = ANY(banned_ids) THEN
            outcomes[i] := 5;
            CONTINUE;
        END IF;
        IF banned_pks <> '{}' AND encode(pk, 'hex') = ANY(banned_pks) THEN
            outcomes[i] := 6;
            CONTINUE;
        END IF;
        IF allowlist AND NOT encode(pk, 'hex') = ANY(allowed_pks) THEN
            outcomes[i] := 7;
            CONTINUE;
        END IF;
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
