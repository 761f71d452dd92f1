-- The workload acting as the account (a trusted issuer's token): its issuer and its subject.
ALTER TABLE audit_events ADD COLUMN workload_issuer TEXT;
ALTER TABLE audit_events ADD COLUMN workload_subject TEXT;
