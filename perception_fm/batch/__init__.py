"""Many bags at once: `perception-fm batch CONFIG.yaml --bags DIR_OR_GLOB --out RESULTS_DIR`.

Each bag is replayed (perception_fm.replay) and evaluated (perception_fm.eval) as one task, serially
(`--workers 1`) or as Ray tasks on a local or remote cluster. Where things are: finding the bags and naming their
results (perception_fm.batch.jobs), one bag's work and its atomic, resumable result (perception_fm.batch.task),
running the tasks with progress and retries (perception_fm.batch.engine), the summary table, HTML, JSON and CSV
(perception_fm.batch.summary), the command line (perception_fm.batch.cli)."""
