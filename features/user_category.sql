-- user_category: how much of the user's history falls in the candidate's category / subcategory (user family).
--
-- The history list given with an impression holds the user's clicks before t by contract (MIND: the
-- clicks before the log; event logs and synthetic data: the latest clicks strictly before t), so
-- shares come from it alone: adding the log's own clicks would count those twice.
-- Reads: requests (history lists), candidate_rows, items.

CREATE OR REPLACE TEMP TABLE user_category_features AS
WITH

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

history_lengths AS (
    SELECT impression_id, len(history) AS n
    FROM requests
)

SELECT g.impression_id, g.level, g.key, g.clicks / l.n AS share
FROM history_groups AS g
JOIN history_lengths AS l USING (impression_id);
