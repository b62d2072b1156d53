-- item: the candidate's popularity before t, in trailing windows and all time, and when it was first seen.
--
-- Point in time: an item's timeline has one row per moment it has events or is asked about, unique
-- per (item, timestamp). Every total is a frame ending at the current row minus the current row's
-- own events, so events at t itself (the impression being featurised, and any tie) never count:
-- all time = running total - own; window [t - w, t) = RANGE frame of w hours - own.
-- A line with {hours} is repeated for each configured window (FeatureConfig.windows_hours);
-- {longest_hours} is the longest window, whose clicks rank candidates by popularity in context.sql.
-- Reads: events, candidate_rows, feature_params.

CREATE OR REPLACE TEMP TABLE item_features AS
WITH

item_moments AS (  -- events of each item, per timestamp
    SELECT item_id, ts, count(*) AS impressions, sum(is_click) AS clicks
    FROM events
    GROUP BY item_id, ts
),

query_points AS (  -- every (item, t) a feature row asks about
    SELECT DISTINCT item_id, timestamp AS ts
    FROM candidate_rows
),

item_timeline AS (
    SELECT item_id, ts, coalesce(m.impressions, 0) AS impressions, coalesce(m.clicks, 0) AS clicks
    FROM item_moments AS m
    FULL OUTER JOIN query_points AS q USING (item_id, ts)
),

item_counts AS (
    SELECT
        item_id,
        ts,
        sum(impressions) OVER (item_time RANGE BETWEEN INTERVAL {hours} HOUR PRECEDING AND CURRENT ROW) - impressions AS item_impressions_{hours}h,
        sum(clicks) OVER (item_time RANGE BETWEEN INTERVAL {hours} HOUR PRECEDING AND CURRENT ROW) - clicks AS item_clicks_{hours}h,
        sum(impressions) OVER running - impressions AS item_impressions_all,
        sum(clicks) OVER running - clicks AS item_clicks_all,
        -- the first event up to and including t; when that is t itself the item is new at t
        nullif(min(ts) FILTER (WHERE impressions > 0) OVER running, ts) AS first_seen
    FROM item_timeline
    WINDOW
        item_time AS (PARTITION BY item_id ORDER BY ts),
        running AS (item_time ROWS UNBOUNDED PRECEDING)
)

SELECT
    c.*,
    (c.item_clicks_{hours}h + p.ctr_prior * p.ctr_weight) / (c.item_impressions_{hours}h + p.ctr_weight) AS item_ctr_{hours}h,
    (c.item_clicks_all + p.ctr_prior * p.ctr_weight) / (c.item_impressions_all + p.ctr_weight) AS item_ctr_all,
    c.item_clicks_{longest_hours}h AS popularity
FROM item_counts AS c
SEMI JOIN query_points AS q USING (item_id, ts)
CROSS JOIN feature_params AS p;
