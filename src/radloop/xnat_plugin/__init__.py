"""radloop and XNAT: results into XNAT projects, and radloop pipelines as XNAT project pipelines.

* :mod:`.destination`: the ``xnat`` destination kind (results → session resources, ROI collections);
* :mod:`.command`: XNAT Container Service commands for pipelines (``radloop xnat command``);
* :mod:`.run_pipeline`: a pipeline on a mounted folder, without a server (``radloop run-pipeline``);
* :mod:`.watcher`: new sessions of a project → pipelines → results (``radloop xnat watch``).

Only :mod:`.client` imports the ``xnat`` client (xnatpy).
"""
