-- Producer definitions loaded from plan files, with every revision kept: who changed what, when.
CREATE TABLE producer (
    id               INTEGER PRIMARY KEY,
    pool             TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    current_revision INTEGER NOT NULL,
    -- Set when the producer disappeared from the plan files; cleared if it comes back.
    retired_at       TEXT,
    UNIQUE (pool, name)
);

CREATE TABLE producer_revision (
    producer_id  INTEGER NOT NULL REFERENCES producer (id) ON DELETE CASCADE,
    revision     INTEGER NOT NULL,
    -- Canonical JSON of the definition: equal definitions have equal text.
    definition   TEXT    NOT NULL,
    content_hash TEXT    NOT NULL,
    source_file  TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    PRIMARY KEY (producer_id, revision)
) WITHOUT ROWID;
