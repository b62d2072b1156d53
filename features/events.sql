-- events: the behaviour log as timestamped events, one row per labelled (impression, candidate).
--
-- Every labelled candidate of the log is an impression event of its item at the impression's time,
-- and a click event too when its label is 1. Unlabelled rows (requests, MIND test) and sampled
-- negatives were never shown to anyone, so they are not behaviour and are left out.
-- Reads: log_rows (the log in long format), items.

CREATE OR REPLACE TEMP TABLE events AS
SELECT
    log.user_id,
    log.item_id,
    log.impression_id,
    log.timestamp AS ts,
    CAST(log.label AS INTEGER) AS is_click,
    items.category,
    items.subcategory
FROM log_rows AS log
LEFT JOIN items USING (item_id)
WHERE log.label IS NOT NULL
  AND NOT log.is_sampled;
