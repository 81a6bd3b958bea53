"""Jobs over the whole log: `replay` (verify or rebuild the projection), `retention` (trim the log
past a horizon), `archive` (export and read archived events), `result_retention` (delete old full
results and orphans)."""
