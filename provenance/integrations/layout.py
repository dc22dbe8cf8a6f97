"""Where the integrations write inside a bundle (their additions to the layout in provenance.formats)."""

from provenance import formats

COMMAND_JSON = "command.json"  # `prov run`: the wrapped command, its exit status, signals and timings
COMMAND_SCHEMA = formats.WRAPPED_COMMAND_SCHEMA
OUTPUTS_DIR = "outputs"  # `prov run --outputs`: outputs/<label>/... copied files
OUTPUTS_INDEX = formats.OUTPUTS_INDEX  # every declared output file: size, sha256, format, role
OUTPUTS_SCHEMA = formats.OUTPUTS_SCHEMA
WANDB_JSON = "integrations/wandb.json"  # the wandb run: id, url, mode, project, copied folder
WANDB_DIR = "integrations/wandb"  # the wandb run folder (offline-run-* or run-*), copied before the seal
HF_TRAINER_JSON = "integrations/hf_trainer.json"  # the Trainer's arguments and what the callback recorded
