"""Evidence boxes made by a model, for datasets that ship none: the boxes stage.

A dataset's ``boxes`` entry of kind ``vlm`` or ``detector`` makes the stage
ask, per item and image, a grounding VLM for the regions needed to answer the
question (:mod:`.vlm`, answers parsed in the family's published format by
:mod:`.formats`, coordinates mapped to the original pixels by :mod:`.coords`)
or an open-vocabulary detector for phrases from the question (:mod:`.detector`,
:mod:`.phrases`). It writes the boxes in the box-file format the items stage
reads (``peekaboo.datasets.boxes``), a table of what was asked and answered,
the rejects with their reasons, and, where the dataset has boxes of its own,
its agreement with them (:mod:`.agreement`). Entry: :func:`.stage.run_stage`.
These boxes are the project's, made by the configured model, not the papers'.
"""
