"""How a run uses the machine: thread limits (:mod:`.threads`), the helper process that
imports nilearn (:mod:`.helper_process`), worker processes (:mod:`.parallel`), memory
estimates (:mod:`.resources`), the work-folder cache (:mod:`.cache`), progress lines
(:mod:`.progress`).
"""
