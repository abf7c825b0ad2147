-- tickertune SQL cookbook: queries on Optuna's own schema (results/tuning.db).
-- Run one with: sqlite3 results/tuning.db < docs/queries.sql, or tickertune sql "<query>".
-- Schema notes: `studies` has no direction column (see study_directions), `trials` has no
-- value column (see trial_values), and trial_params.param_value is Optuna's internal float:
-- a categorical is the index of its choice in distribution_json.
-- tests/test_readme_sql.py runs every query here on a real study and checks the rows; the
-- README shows the same queries.

-- name: Studies with their direction and trial count
SELECT s.study_name, d.direction, COUNT(t.trial_id) AS n_trials
FROM studies s
JOIN study_directions d ON d.study_id = s.study_id
LEFT JOIN trials t ON t.study_id = s.study_id
GROUP BY s.study_id, d.objective
ORDER BY s.study_name;

-- name: Trials per study by state
SELECT s.study_name, t.state, COUNT(*) AS n
FROM trials t
JOIN studies s ON s.study_id = t.study_id
GROUP BY s.study_name, t.state
ORDER BY s.study_name, t.state;

-- name: The best complete trial of each study
SELECT study_name, number, value FROM (
  SELECT s.study_name, t.number, v.value,
         ROW_NUMBER() OVER (PARTITION BY s.study_id ORDER BY v.value) AS rank
  FROM trials t
  JOIN studies s ON s.study_id = t.study_id
  JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
  WHERE t.state = 'COMPLETE'
) WHERE rank = 1
ORDER BY study_name;

-- name: The params of the best trial of xgb_tuning_AAPL, categoricals decoded
WITH best AS (
  SELECT t.trial_id FROM trials t
  JOIN studies s ON s.study_id = t.study_id
  JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
  WHERE s.study_name = 'xgb_tuning_AAPL' AND t.state = 'COMPLETE'
  ORDER BY v.value LIMIT 1
)
SELECT p.param_name,
       CASE WHEN json_extract(p.distribution_json, '$.name') = 'CategoricalDistribution'
            THEN json_extract(p.distribution_json,
                              '$.attributes.choices[' || CAST(p.param_value AS INTEGER) || ']')
            ELSE p.param_value END AS value
FROM trial_params p JOIN best ON best.trial_id = p.trial_id
ORDER BY p.param_name;

-- name: How the validation loss evolved per trial
SELECT t.number, t.state, COUNT(iv.step) AS n_steps, MIN(iv.step) AS first_step,
       MAX(iv.step) AS last_step, MIN(iv.intermediate_value) AS best_intermediate
FROM trials t
JOIN studies s ON s.study_id = t.study_id
JOIN trial_intermediate_values iv ON iv.trial_id = t.trial_id
WHERE s.study_name = 'xgb_tuning_AAPL'
GROUP BY t.trial_id
ORDER BY t.number;

-- name: The MLflow run of each trial
SELECT t.number, t.state, json_extract(a.value_json, '$') AS mlflow_run_id
FROM trials t
JOIN studies s ON s.study_id = t.study_id
JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'mlflow_run_id'
WHERE s.study_name = 'xgb_tuning_AAPL'
ORDER BY t.number;

-- name: The params of the best transformer trial, categoricals decoded
WITH best AS (
  SELECT t.trial_id FROM trials t
  JOIN studies s ON s.study_id = t.study_id
  JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
  WHERE s.study_name = 'transformer_tuning_AAPL' AND t.state = 'COMPLETE'
  ORDER BY v.value LIMIT 1
)
SELECT p.param_name,
       CASE WHEN json_extract(p.distribution_json, '$.name') = 'CategoricalDistribution'
            THEN json_extract(p.distribution_json,
                              '$.attributes.choices[' || CAST(p.param_value AS INTEGER) || ']')
            ELSE p.param_value END AS value
FROM trial_params p JOIN best ON best.trial_id = p.trial_id
ORDER BY p.param_name;
