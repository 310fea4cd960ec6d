"""The Optimize panel's Search section: tick sliders, pick an objective and a sampler, and a background search
(:mod:`studio.search`, driven by :class:`studio.ui.searching.SearchController`) tries settings while a timer
refreshes its convergence plot and its best trials; *Load into sliders* makes a trial your recipe."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..searching import SAMPLERS, progress_markdown

TICK_SECONDS = 1.0


def build() -> SimpleNamespace:
    ns = SimpleNamespace()
    gr.Markdown("Tries settings of your recipe one merge at a time and keeps the best, scored by an objective: the "
                "demo family's **validation** split (the test split stays for the report), the preview's text or "
                "evaluation set, or **your own** function `python:module:function` of the merged tensors (a module "
                "in an allowed folder; maximised, add `,min` to minimise). Samplers: *tpe* and *cmaes* learn where "
                "to look, *nsga2* for several objectives (one per line: a Pareto front), *random* and *grid* as "
                "baselines. Every trial is stored in the workspace (`searches/`); `python -m studio search` resumes "
                "it.", elem_classes=["panel-note"])
    ns.settings = gr.CheckboxGroup(label="Settings to search (bounds: the declared range)", elem_id="search-settings")
    ns.ranges = gr.Textbox(label="Other bounds (optional)", lines=2, elem_id="search-ranges",
                           placeholder="one per line, PATH=LO:HI — e.g. parameters.lambda=0.2:0.8")
    with gr.Row(equal_height=True):
        ns.objective = gr.Dropdown(label="Objective", scale=3, elem_id="search-objective")
        ns.own = gr.Textbox(label="…or your own (replaces it)", scale=3, elem_id="search-own",
                            placeholder="python:my_module:score   (,min to minimise)")
    with gr.Row(equal_height=True):
        ns.sampler = gr.Dropdown(list(SAMPLERS), value="tpe", label="sampler", scale=1, elem_id="search-sampler")
        ns.trials = gr.Number(30, label="trials", precision=0, minimum=1, scale=1, elem_id="search-trials")
        ns.seed = gr.Number(0, label="seed", precision=0, minimum=0, scale=1, elem_id="search-seed")
        ns.grid_points = gr.Number(5, label="grid points per setting", precision=0, minimum=2, scale=1)
        ns.start = gr.Button("Search", variant="primary", scale=1, elem_id="search-start")
        ns.stop = gr.Button("Stop", variant="stop", scale=1, elem_id="search-stop")
    ns.status = gr.Markdown(elem_id="search-status")
    ns.plot = gr.Plot(show_label=False, visible=False, elem_id="search-plot")
    ns.table = gr.Dataframe(visible=False, interactive=False, label="Best trials (click a row to pick it)",
                            elem_id="search-table")
    with gr.Row(equal_height=True, visible=False) as ns.load_row:
        ns.trial = gr.Number(label="trial", precision=0, minimum=0, scale=1, elem_id="search-trial")
        ns.load = gr.Button("Load into sliders", variant="primary", scale=2, elem_id="search-load")
    ns.timer = gr.Timer(TICK_SECONDS, active=False)
    return ns


def rendered(ns) -> list:
    return [ns.settings, ns.objective]


def render(ns, s) -> dict:
    sc = s.searching
    settings = sc.setting_choices()
    known = {v for _, v in settings}
    objectives = sc.objective_choices()
    return {ns.settings: {"choices": settings, "value": [p for p in sc.chosen if p in known]},
            ns.objective: {"choices": objectives, "value": objectives[0][1] if objectives else None}}


def view(ns, s) -> dict:
    """What the page shows of the tab's search now, and whether the timer keeps refreshing it."""
    sc = s.searching
    if sc.run is None:
        return {ns.timer: gr.Timer(active=False)}
    p = sc.progress()
    headers, rows = sc.best_rows()
    return {ns.status: progress_markdown(p),
            ns.plot: gr.update(value=sc.figure(), visible=bool(p["points"])),
            ns.table: gr.update(value={"headers": headers, "data": rows}, visible=bool(rows)),
            ns.load_row: gr.update(visible=bool(rows)),
            ns.trial: rows[0][0] if rows else None,
            ns.timer: gr.Timer(active=not p["finished"])}


def wire(ui, ns) -> None:
    ui.on(ns.settings.input, lambda s, paths: s.searching.choose(paths), [ns.settings], preview=False,
          scope=[ns.settings])
    shown = [ns.status, ns.plot, ns.table, ns.load_row, ns.trial, ns.timer]

    def start(state, settings, ranges, objective, own, sampler, trials, seed, grid_points):
        s = ui.session(state)
        s.searching.choose(settings)
        _, err = ui.attempt(lambda: s.searching.start(settings, ranges, objective, own, sampler, trials, seed,
                                                      grid_points), "search")
        if err:
            return {ns.status: f"⚠ **Not started:** {err}"}
        return view(ns, s)

    ns.start.click(ui.guard(start, "search"), [ui.state, ns.settings, ns.ranges, ns.objective, ns.own, ns.sampler,
                                               ns.trials, ns.seed, ns.grid_points], shown,
                   api_name="search", concurrency_id=ui.HEAVY)
    # the timer, Stop and a row click never wait behind heavy work: each is its own small event
    ns.timer.tick(ui.guard(lambda state: view(ns, ui.session(state)), "search progress"), [ui.state], shown,
                  show_progress="hidden", api_visibility="undocumented")

    def stop(state):
        s = ui.session(state)
        return "■ Stopping after the current trial…" if s.searching.stop() else gr.update()

    ns.stop.click(ui.guard(stop, "stop search"), [ui.state], [ns.status], api_name="stop_search")
    def pick(evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else gr.update()

    ns.table.select(pick, None, [ns.trial], api_visibility="undocumented")
    ui.on(ns.load.click, lambda s, trial: s.searching.load(trial), [ns.trial], api_name="load_search_trial")
