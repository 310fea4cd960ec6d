"""Gradio panels: each ``build()`` lays out one panel's components and returns them in a namespace; the wiring of
events to :class:`studio.ui.session.Session` methods lives in :mod:`studio.ui.app`."""
