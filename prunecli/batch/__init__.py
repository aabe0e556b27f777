"""``prunecli batch``: one pipeline over many models, each in its own process, with a summary.

``models`` expands paths, globs, manifests and ``timm:NAME``; ``execute`` runs them (jobs,
timeout, resume); ``rows`` and ``summary`` make the summary files; ``junit`` the JUnit XML.
"""
