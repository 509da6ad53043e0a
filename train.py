"""Train ARR-COC, one YAML per curriculum phase.

    python train.py configs/demo/phase1.yaml [key=value ...]
    accelerate launch --config_file configs/accelerate/cpu_ddp_2proc.yaml train.py configs/demo/phase1.yaml

Reads top to bottom: config -> model -> method (the model's own selection and relevance tag) -> phase (what
trains) -> data -> trainer -> train -> final checkpoint in `output_dir/checkpoint`, loadable with
AutoModelForImageTextToText / AutoProcessor.from_pretrained, with the resolved configuration beside it
(`training_config.yaml`, which eval.py records). `key=value` arguments override YAML keys (values parsed as YAML);
unknown keys are refused.

A trained baseline is the same recipe with its own selection, e.g. uniform pooling at K=64 without the tag:

    python train.py configs/demo/phase1.yaml selection_method=uniform relevance_tag=false train_budget=64 \
        eval_budget=64 output_dir=outputs/demo/baseline_uniform

The recipe itself lives in the package (modeling_arrcoc/training/recipe.py), where tools, benchmarks and tests use
it too; this file is only its command line.
"""

from modeling_arrcoc.training.recipe import main

if __name__ == "__main__":
    main()
