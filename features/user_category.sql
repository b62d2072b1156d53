-- user_category: how many of the user's clicks fall in the candidate's category / subcategory (user family).
--
-- "The user's clicks" are the history list given with the impression (known at t by contract) plus
-- the user's clicks in the log strictly before t. context.sql divides by their total for the share.
-- Reads: events, candidate_rows, requests (history lists), items.

CREATE OR REPLACE TEMP TABLE user_category_features AS
WITH

click_groups AS (
    SELECT user_id, 'category' AS level, category AS key, ts FROM events WHERE is_click = 1 AND category IS NOT NULL
    UNION ALL
    SELECT user_id, 'subcategory' AS level, subcategory AS key, ts FROM events WHERE is_click = 1 AND subcategory IS NOT NULL
),

click_timeline AS (  -- running click count of the user in each group, after each timestamp
    SELECT
        user_id,
        level,
        key,
        ts,
        sum(clicks) OVER (PARTITION BY user_id, level, key ORDER BY ts ROWS UNBOUNDED PRECEDING) AS clicks_to_date
    FROM (SELECT user_id, level, key, ts, count(*) AS clicks FROM click_groups GROUP BY ALL)
),

history_items AS (
    SELECT impression_id, unnest(history) AS item_id
    FROM requests
),

history_groups AS (  -- history items per impression and group
    SELECT h.impression_id, 'category' AS level, items.category AS key, count(*) AS clicks
    FROM history_items AS h JOIN items USING (item_id)
    WHERE items.category IS NOT NULL
    GROUP BY ALL
    UNION ALL
    SELECT h.impression_id, 'subcategory' AS level, items.subcategory AS key, count(*) AS clicks
    FROM history_items AS h JOIN items USING (item_id)
    WHERE items.subcategory IS NOT NULL
    GROUP BY ALL
),

query_points AS (  -- the groups of each impression's candidates
    SELECT DISTINCT r.impression_id, r.user_id, r.timestamp AS ts, 'category' AS level, items.category AS key
    FROM candidate_rows AS r JOIN items USING (item_id)
    WHERE items.category IS NOT NULL
    UNION ALL
    SELECT DISTINCT r.impression_id, r.user_id, r.timestamp AS ts, 'subcategory' AS level, items.subcategory AS key
    FROM candidate_rows AS r JOIN items USING (item_id)
    WHERE items.subcategory IS NOT NULL
),

log_clicks_before_t AS (
    SELECT q.impression_id, q.level, q.key, coalesce(tl.clicks_to_date, 0) AS clicks
    FROM query_points AS q
    ASOF LEFT JOIN click_timeline AS tl
        ON q.user_id = tl.user_id AND q.level = tl.level AND q.key = tl.key AND q.ts > tl.ts
)

SELECT
    c.impression_id,
    c.level,
    c.key,
    c.clicks + coalesce(h.clicks, 0) AS clicks_in_group
FROM log_clicks_before_t AS c
LEFT JOIN history_groups AS h USING (impression_id, level, key);
