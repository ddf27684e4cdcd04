"""The review side of the loop: a radiologist opens an AI result from the PACS and decides on it.

* :mod:`.signing`: signed, expiring launch URLs (what a PACS workstation opens) and the review
  session cookie a valid launch sets;
* :mod:`.service`: what the review app does (launch, view, accept / reject / edit, worklist,
  quality), every step audited;
* :mod:`.routes`: the ``/review`` router (launch endpoint, pages, the JSON and NIfTI the app fetches);
* :mod:`.pages`: the server-rendered pages (messages, worklist, quality plots);
* :mod:`.conversion` and :mod:`.review_cache`: the source series and the AI SEG as NIfTI on one
  grid, converted once per result; :mod:`.prefetch` converts new results before anyone opens them;
* ``static/``: the built review app (NiiVue), sources in ``web/``.

The browser only talks to radloop: PACS credentials never reach it.
"""
