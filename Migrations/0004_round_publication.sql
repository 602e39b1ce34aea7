-- Rounds a node planned but has not put on the pool's history stream yet: its process died
-- between the intent and the outcome, or Redis was unreachable when it published. The node
-- publishes them later (at its next start, or once Redis answers again), so that every node's
-- history ends up with every round. Rounds learnt from the stream, and those recorded before this
-- migration, count as published.
ALTER TABLE round ADD COLUMN unpublished INTEGER NOT NULL DEFAULT 0;
CREATE INDEX round_unpublished ON round (pool, id) WHERE unpublished = 1;
