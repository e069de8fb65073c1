"""Support-ticket triage on relaybus: classify a ticket, answer each question in parallel, compose the reply.

Workers and clients load it by naming its pipeline module::

    RELAYBUS_EXTRA_MODULES=helpdesk.pipeline
    RELAYBUS_EXTRA_AGENTS=classifier,answerer,composer,notifier

See ../README.md and docs/first-pipeline.md, which walks through this code.
"""
