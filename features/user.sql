-- user: the user's activity before t: impressions, clicks, time of the last click.
--
-- Same timeline + ASOF pattern as item.sql, per user. Two impressions of one user at the same
-- timestamp do not see each other.
-- Reads: events, candidate_rows.

CREATE OR REPLACE TEMP TABLE user_features AS
WITH

user_moments AS (
    SELECT
        user_id,
        ts,
        count(DISTINCT impression_id) AS impressions,
        sum(is_click) AS clicks,
        max(CASE WHEN is_click = 1 THEN ts END) AS last_click
    FROM events
    GROUP BY user_id, ts
),

user_timeline AS (
    SELECT
        user_id,
        ts,
        sum(impressions) OVER running AS impressions_to_date,
        sum(clicks) OVER running AS clicks_to_date,
        max(last_click) OVER running AS last_click
    FROM user_moments
    WINDOW running AS (PARTITION BY user_id ORDER BY ts ROWS UNBOUNDED PRECEDING)
),

query_points AS (
    SELECT DISTINCT user_id, timestamp AS ts
    FROM candidate_rows
)

SELECT
    q.user_id,
    q.ts,
    coalesce(tl.impressions_to_date, 0) AS user_impressions_before,
    coalesce(tl.clicks_to_date, 0) AS user_clicks_before,
    tl.last_click
FROM query_points AS q
ASOF LEFT JOIN user_timeline AS tl
    ON q.user_id = tl.user_id AND q.ts > tl.ts;
