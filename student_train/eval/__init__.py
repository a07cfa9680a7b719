"""`student-train eval`: student vs teacher at K steps on the val split and unseen prompts.

run.py               EvalConfig and run(config): the entry point
sets.py              the eval sets (val rows of the store, the unseen-prompt store)
models.py            teacher denoiser + VAE, student, judge
generation.py        teacher@K / student@K latents for a set
teacher_baseline.py  the teacher's own K-step DDIM + CFG from cached conditioning
report.py            metrics, targets, the printed table
image_metrics.py     PSNR / MSE;  grid.py  the image grid;  devices.py  --device / --dtype
"""
