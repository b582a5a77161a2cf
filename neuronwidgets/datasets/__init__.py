"""Datasets: sequences of `Sample` (image, prompt, caption, QA, concept masks).

    nw.datasets.shapes(n=2000, seed=0)          # the synthetic Shapes world, with masks
    nw.datasets.image_folder("path/")           # captions.json / captions.csv beside the images
    nw.datasets.coco("instances.json", images="val2017/", captions="captions.json")
    nw.datasets.hf_dataset(ds, image_column="image", caption_column="caption")
"""

from neuronwidgets.datasets.base import (
           DESCRIBE_PROMPT,
           PROMPT_TEMPLATE,
           QA,
           Sample,
           SampleList,
)
from neuronwidgets.datasets.coco import coco, hf_dataset
from neuronwidgets.datasets.convert import as_samples
from neuronwidgets.datasets.folder import image_folder
from neuronwidgets.datasets.shapes import (
           shapes,  # the function; imported eagerly so the submodule never shadows it
)
from neuronwidgets.datasets.spec import from_spec

__all__ = ["QA", "Sample", "SampleList", "PROMPT_TEMPLATE", "DESCRIBE_PROMPT", "shapes", "image_folder", "coco",
           "hf_dataset", "as_samples", "from_spec"]
