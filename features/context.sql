-- context: one row per (impression, candidate) with every family joined on, plus the impression context.
--
-- The candidate's popularity rank uses its clicks in the longest trailing window; its freshness rank
-- its age (publish time, else first seen before t; never seen = newest). Ranks are 1 = best, ties share.
-- Reads: candidate_rows, requests, items, item_features, category_features, user_features,
-- user_category_features, text_features.

-- Its own table, from narrow inputs: window operators carry every column they are given, and
-- materialising it first keeps the final query's joins (and memory) fewer.
CREATE OR REPLACE TEMP TABLE impression_context AS
SELECT
    r.impression_id,
    r.position,
    count(*) OVER impression AS ctx_n_candidates,
    rank() OVER (impression ORDER BY it.popularity DESC) AS ctx_popularity_rank,
    rank() OVER (
        impression ORDER BY coalesce(r.timestamp - items.publish_time, r.timestamp - it.first_seen, INTERVAL 0 SECOND) ASC
    ) AS ctx_freshness_rank
FROM candidate_rows AS r
JOIN item_features AS it ON it.item_id = r.item_id AND it.ts = r.timestamp
LEFT JOIN items ON items.item_id = r.item_id
WINDOW impression AS (PARTITION BY r.impression_id);

-- Candidates with their item-side features, materialised so that no single query holds every
-- family's hash table at once (DuckDB spills a finished table, not a pipeline's join tables).
CREATE OR REPLACE TEMP TABLE candidate_items AS
SELECT
    r.*,
    items.category,
    items.subcategory,
    req.user_history_len,
    it.* EXCLUDE (item_id, ts, first_seen, popularity),
    (epoch_us(r.timestamp) - epoch_us(it.first_seen)) / 3600e6 AS item_hours_since_first_seen,
    (epoch_us(r.timestamp) - epoch_us(items.publish_time)) / 3600e6 AS item_hours_since_published,
    cat.ctr AS item_category_ctr,
    sub.ctr AS item_subcategory_ctr
FROM candidate_rows AS r
JOIN item_features AS it ON it.item_id = r.item_id AND it.ts = r.timestamp
LEFT JOIN items ON items.item_id = r.item_id
LEFT JOIN (SELECT impression_id, len(history) AS user_history_len FROM requests) AS req ON req.impression_id = r.impression_id
LEFT JOIN category_features AS cat
    ON cat.level = 'category' AND cat.key = items.category AND cat.ts = r.timestamp
LEFT JOIN category_features AS sub
    ON sub.level = 'subcategory' AND sub.key = items.subcategory AND sub.ts = r.timestamp;

CREATE OR REPLACE TEMP VIEW feature_table AS
SELECT
    r.*,
    u.user_impressions_before,
    u.user_clicks_before,
    (epoch_us(r.timestamp) - epoch_us(u.last_click)) / 3600e6 AS user_hours_since_last_click,
    -- no history row for a group means none of the history is in it; no history at all means no share
    CASE WHEN r.category IS NOT NULL AND r.user_history_len > 0 THEN coalesce(ucat.share, 0) END AS user_category_share,
    CASE WHEN r.subcategory IS NOT NULL AND r.user_history_len > 0 THEN coalesce(usub.share, 0) END AS user_subcategory_share,
    c.ctx_n_candidates,
    hour(r.timestamp) AS ctx_hour,
    c.ctx_popularity_rank,
    c.ctx_freshness_rank,
    t.* EXCLUDE (impression_id, item_id)
FROM candidate_items AS r
JOIN user_features AS u ON u.user_id = r.user_id AND u.ts = r.timestamp
JOIN impression_context AS c ON c.impression_id = r.impression_id AND c.position = r.position
LEFT JOIN user_category_features AS ucat
    ON ucat.impression_id = r.impression_id AND ucat.level = 'category' AND ucat.key = r.category
LEFT JOIN user_category_features AS usub
    ON usub.impression_id = r.impression_id AND usub.level = 'subcategory' AND usub.key = r.subcategory
LEFT JOIN text_features AS t
    ON t.impression_id = r.impression_id AND t.item_id = r.item_id;
