"""Job-side code: runs the same on this machine and on Hugging Face Jobs; imports no tunestep.

``JOB_FILES`` is the one list of the training job's files: the draft hashes each (the
digest covers them), the local backend copies each into the job's folder and an hf-jobs
bundle carries each beside ``job.json``. A new job module goes here, or the job fails
where only the listed files travel.

May import: nothing of tunestep (each job file is standalone, PEP 723). The one exception
is ``inspect_remote.py``, the remote inspector's wrapper: it imports the inspector from
the approved wheel it unpacks at run time.
"""

JOB_SCRIPT = "train_sft.py"
JOB_FILES = (
    JOB_SCRIPT,
    "job_common.py",
    "job_config.py",
    "job_data.py",
    "job_train.py",
    "job_evaluate.py",
    "job_answers.py",
    "job_stats.py",
    "job_gate.py",
    "job_report.py",
    "job_store.py",
    "job_outcome.py",
    "job_process.py",
    "sft_data.py",
    "sft_batched.py",
    "qwen3_training.jinja",
    # The exact dependency versions the HF job installs (`uv run --locked`): regenerated
    # from train_sft.py's header by `make lock`, never by a draft (drafting works offline).
    "train_sft.py.lock",
)
