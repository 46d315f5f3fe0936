"""The samplers' names and default step counts, without torch: the command line's help shows
them and the samplers (``dimbench.diffusion.samplers``) apply them."""

SAMPLERS = ("dpm++", "ddim", "ddpm")
DEFAULT_STEPS = {"dpm++": 50, "ddim": 50, "ddpm": 250}
