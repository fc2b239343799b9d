-- 0008: cheaper settlement postings.
--
-- * ledger_transfers referenced ledger_accounts by foreign keys on both
--   sides: two key-check triggers per inserted transfer, each locking the
--   account row. Accounts are never deleted, every writer (gm_ledger_move,
--   gm_ledger_transfer, gm_ledger_sweep) takes the account ids from
--   ledger_accounts in the same statement, and AuditLedger checks that
--   every entry's account exists and balances.
-- * The rows updated most often (nodes by every heartbeat, leases by every
--   metering, the ledger's accounts by every sweep) get room on their pages
--   for HOT updates and are pruned before their version chains grow.
ALTER TABLE ledger_transfers DROP CONSTRAINT ledger_transfers_debit_account_id_fkey;
ALTER TABLE ledger_transfers DROP CONSTRAINT ledger_transfers_credit_account_id_fkey;
ALTER TABLE nodes SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.02);
ALTER TABLE leases SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02);
ALTER TABLE ledger_accounts SET (fillfactor = 50);
