"""Gradio panels, one file each. A panel module has four functions:

* ``build(...)`` lays out its components (inside the tab the app opens) and returns them in a namespace;
* ``rendered(ns)`` lists the components ``render`` fills;
* ``render(ns, session)`` says what they show for a session ({component: properties}); the app sends only what
  differs from what the page shows;
* ``wire(ui)`` connects its events to Session calls through :meth:`studio.ui.app.StudioUI.on`.
"""
