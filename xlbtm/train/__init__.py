"""Training of ONE expert per process group, and the launcher for K of them.

    from xlbtm.train.config import TrainConfig          # everything one expert's run needs
    from xlbtm.train.loop import train_expert            # every rank calls it; resumes from checkpoints/latest
    from xlbtm.formats.expert import ExpertInfo, read_expert_info, write_expert_info   # expert.json
    from xlbtm.formats.layout import RunLayout, list_experts     # <ser>/<K>_clusters/<run>.cluster<k>/
    from xlbtm.train.expert_dir import RunLock                   # one trainer per run dir
    from xlbtm.train.plan import TrainExpertsRequest, plan_experts, describe_plan   # what K jobs will do
    from xlbtm.train.experts import run_plan, describe_results                     # running them

Modules: config (TrainConfig), optim (AdamW, polynomial decay, clipping), metrics (tokens/s, MFU, train_log),
preemption (signal -> agreed save -> requeue), trainer (one expert's Trainer), seeding (its starting model),
loop (its entry point), job (submitit callable), plan (the request and its plan), experts (running K jobs).
"""
