-- send_report claims a delivery before it calls Telegram and marks it sent
-- afterwards, each in a short transaction of its own, so no database
-- connection is held while Telegram answers. Portable SQL (PostgreSQL and
-- SQLite). Rows written before this migration were delivered: 'sent'.

-- 'sending' (claimed, the message may be on its way) or 'sent'.
ALTER TABLE report_deliveries ADD COLUMN state TEXT NOT NULL DEFAULT 'sent';

-- Unix seconds until which a 'sending' claim keeps other runs off; after
-- it, the claiming run is known to be gone and a redelivery takes over.
ALTER TABLE report_deliveries ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
