-- Retention removes outbound webhook messages past it (flowd_prune), oldest first, in bounded
-- batches: this index finds them without reading the recent ones.
CREATE INDEX webhook_messages_created ON webhook_messages (created_at);
