"""The consumers of the log: `worker/` (runs backtests from the work stream's group), `projector`
(folds events into the read model), `maintenance/` (replay, retention, archive, results
retention) and `engine/` (computes backtests; imports only orchestrator.domain)."""
