-- context: one row per (impression, candidate) with every family joined on, plus the impression context.
--
-- The candidate's popularity rank uses its clicks in the longest trailing window; its freshness rank
-- its age (publish time, else first seen before t; never seen = newest). Ranks are 1 = best, ties share.
-- Reads: candidate_rows, requests, items, item_features, category_features, user_features,
-- user_category_features, text_features.

CREATE OR REPLACE TEMP VIEW feature_table AS
WITH

rows AS (
    SELECT
        r.*,
        items.category,
        items.subcategory,
        items.publish_time,
        len(req.history) AS user_history_len
    FROM candidate_rows AS r
    LEFT JOIN items USING (item_id)
    LEFT JOIN requests AS req USING (impression_id)
),

joined AS (
    SELECT
        r.*,
        it.* EXCLUDE (item_id, ts, first_seen),
        (epoch_us(r.timestamp) - epoch_us(it.first_seen)) / 3600e6 AS item_hours_since_first_seen,
        (epoch_us(r.timestamp) - epoch_us(r.publish_time)) / 3600e6 AS item_hours_since_published,
        cat.ctr AS item_category_ctr,
        sub.ctr AS item_subcategory_ctr,
        u.user_impressions_before,
        u.user_clicks_before,
        (epoch_us(r.timestamp) - epoch_us(u.last_click)) / 3600e6 AS user_hours_since_last_click,
        ucat.clicks_in_group / nullif(r.user_history_len + u.user_clicks_before, 0) AS user_category_share,
        usub.clicks_in_group / nullif(r.user_history_len + u.user_clicks_before, 0) AS user_subcategory_share,
        t.* EXCLUDE (impression_id, item_id)
    FROM rows AS r
    JOIN item_features AS it ON it.item_id = r.item_id AND it.ts = r.timestamp
    JOIN user_features AS u ON u.user_id = r.user_id AND u.ts = r.timestamp
    LEFT JOIN category_features AS cat
        ON cat.level = 'category' AND cat.key = r.category AND cat.ts = r.timestamp
    LEFT JOIN category_features AS sub
        ON sub.level = 'subcategory' AND sub.key = r.subcategory AND sub.ts = r.timestamp
    LEFT JOIN user_category_features AS ucat
        ON ucat.impression_id = r.impression_id AND ucat.level = 'category' AND ucat.key = r.category
    LEFT JOIN user_category_features AS usub
        ON usub.impression_id = r.impression_id AND usub.level = 'subcategory' AND usub.key = r.subcategory
    LEFT JOIN text_features AS t
        ON t.impression_id = r.impression_id AND t.item_id = r.item_id
),

impression_context AS (  -- narrow on purpose: window operators carry every column they are given
    SELECT
        impression_id,
        position,
        count(*) OVER impression AS ctx_n_candidates,
        rank() OVER (impression ORDER BY popularity DESC) AS ctx_popularity_rank,
        rank() OVER (impression ORDER BY coalesce(item_hours_since_published, item_hours_since_first_seen, 0) ASC) AS ctx_freshness_rank
    FROM joined
    WINDOW impression AS (PARTITION BY impression_id)
)

SELECT
    j.*,
    c.ctx_n_candidates,
    hour(j.timestamp) AS ctx_hour,
    c.ctx_popularity_rank,
    c.ctx_freshness_rank
FROM joined AS j
JOIN impression_context AS c USING (impression_id, position);
