-- SQLite schema of the relay's embedded store; applied on every start (idempotent).
-- Bump user_version (see relay/store/sqlite.py SCHEMA_VERSION) with each migration.

CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY,
    id         BLOB    NOT NULL UNIQUE,   -- 32 bytes
    pubkey     BLOB    NOT NULL,          -- 32 bytes
    created_at INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    d_tag      TEXT,                      -- '' or the d tag for replaceable/addressable, else NULL
    expiration INTEGER,                   -- NIP-40, NULL when the event never expires
    raw        BLOB    NOT NULL           -- the event's compact JSON, spliced into replies
);

-- One index per common filter shape, each ordered for "newest first".
CREATE INDEX IF NOT EXISTS events_by_time        ON events (created_at DESC, id);
CREATE INDEX IF NOT EXISTS events_by_author      ON events (pubkey, created_at DESC);
CREATE INDEX IF NOT EXISTS events_by_kind        ON events (kind, created_at DESC);
CREATE INDEX IF NOT EXISTS events_by_author_kind ON events (pubkey, kind, created_at DESC);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_address
    ON events (pubkey, kind, d_tag) WHERE d_tag IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_expiration
    ON events (expiration) WHERE expiration IS NOT NULL;

-- Single-letter tags (the ones #x filters match), created_at copied for ordered scans.
CREATE TABLE IF NOT EXISTS tags (
    seq        INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tags_by_value ON tags (name, value, created_at DESC);
CREATE INDEX IF NOT EXISTS tags_by_event ON tags (seq);

-- NIP-09 tombstones: a deleted event stays deleted when it is published again.
CREATE TABLE IF NOT EXISTS deleted_ids (
    id     BLOB NOT NULL,
    pubkey BLOB NOT NULL,                 -- who asked; only the author's request applies
    PRIMARY KEY (id, pubkey)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS deleted_addresses (
    pubkey BLOB    NOT NULL,
    kind   INTEGER NOT NULL,
    d_tag  TEXT    NOT NULL,
    until  INTEGER NOT NULL,              -- versions created at or before this are deleted
    PRIMARY KEY (pubkey, kind, d_tag)
) WITHOUT ROWID;

-- NIP-62 tombstones: events of this pubkey (and gift wraps to it) created at or before
-- `until` were erased by a request to vanish and are refused when published again.
CREATE TABLE IF NOT EXISTS vanished (
    pubkey BLOB    PRIMARY KEY,
    until  INTEGER NOT NULL
) WITHOUT ROWID;

-- NIP-50 search over content; rowid = events.seq. Triggers keep it in step with every
-- insert and every delete (replacement, NIP-09, expiry purge, NIP-62 vanish).
CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5(
    content, tokenize = 'unicode61 remove_diacritics 0'
);
CREATE TRIGGER IF NOT EXISTS events_fts_insert AFTER INSERT ON events BEGIN
    INSERT INTO events_fts (rowid, content)
    VALUES (new.seq, json_extract(CAST(new.raw AS TEXT), '$.content'));
END;
CREATE TRIGGER IF NOT EXISTS events_fts_delete AFTER DELETE ON events BEGIN
    DELETE FROM events_fts WHERE rowid = old.seq;
END;

-- NIP-86 moderation state (relay/core/moderation.py): one row per entry of a list
-- (banned_pubkeys, allowed_pubkeys, banned_events, allowed_kinds, blocked_ips, info).
CREATE TABLE IF NOT EXISTS moderation (
    list   TEXT NOT NULL,
    key    TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (list, key)
) WITHOUT ROWID;
