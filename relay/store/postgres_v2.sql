-- PostgreSQL schema version 2: the NIP-86 moderation state (relay/store/pg_moderation.py),
-- shared by every instance on the database, as the SQLite file's `moderation` table is.
-- `list` is a ModerationState table (banned_pubkeys, banned_events, allowed_pubkeys,
-- allowed_kinds, blocked_ips) or `info` (the relay's name, description and icon).
CREATE TABLE moderation (
    list   text NOT NULL,
    key    text NOT NULL,
    reason text NOT NULL DEFAULT '',
    PRIMARY KEY (list, key)
);
