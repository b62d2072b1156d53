-- category: the smoothed CTR of the candidate's category and subcategory before t (item family).
--
-- Same timeline pattern as item.sql, with one timeline per (level, key): level is
-- 'category' or 'subcategory', key its value. Events of items without metadata count nowhere.
-- Reads: events, candidate_rows, items, feature_params.

CREATE OR REPLACE TEMP TABLE category_features AS
WITH

group_events AS (  -- each event once for its item's category and once for its subcategory
    SELECT 'category' AS level, category AS key, ts, is_click FROM events WHERE category IS NOT NULL
    UNION ALL
    SELECT 'subcategory' AS level, subcategory AS key, ts, is_click FROM events WHERE subcategory IS NOT NULL
),

group_moments AS (
    SELECT level, key, ts, count(*) AS impressions, sum(is_click) AS clicks
    FROM group_events
    GROUP BY level, key, ts
),

candidate_groups AS (
    SELECT items.category, items.subcategory, r.timestamp AS ts
    FROM candidate_rows AS r JOIN items USING (item_id)
),

query_points AS (
    SELECT DISTINCT 'category' AS level, category AS key, ts FROM candidate_groups WHERE category IS NOT NULL
    UNION ALL
    SELECT DISTINCT 'subcategory' AS level, subcategory AS key, ts FROM candidate_groups WHERE subcategory IS NOT NULL
),

group_timeline AS (
    SELECT level, key, ts, coalesce(m.impressions, 0) AS impressions, coalesce(m.clicks, 0) AS clicks
    FROM group_moments AS m
    FULL OUTER JOIN query_points AS q USING (level, key, ts)
),

group_counts AS (  -- totals strictly before t: running total minus the moment's own events
    SELECT
        level,
        key,
        ts,
        sum(impressions) OVER running - impressions AS impressions,
        sum(clicks) OVER running - clicks AS clicks
    FROM group_timeline
    WINDOW running AS (PARTITION BY level, key ORDER BY ts ROWS UNBOUNDED PRECEDING)
)

SELECT c.level, c.key, c.ts, (c.clicks + p.ctr_prior * p.ctr_weight) / (c.impressions + p.ctr_weight) AS ctr
FROM group_counts AS c
SEMI JOIN query_points AS q USING (level, key, ts)
CROSS JOIN feature_params AS p;
