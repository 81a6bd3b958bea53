// The paths the dashboard's scripts use, from the page: layout.html writes each route's path, by the
// route's name, into <script type="application/json" id="routes"> (built with path_for, so no script
// types a URL). pathFor("retry", { task_id: id }) fills in the path's `{task_id}`, as path_for does
// in the templates; a name the page did not hand over throws.
"use strict";
const pathFor = (() => {
  const routes = JSON.parse(document.getElementById("routes").textContent);
  return (name, params = {}) => {
    if (!Object.hasOwn(routes, name)) throw new Error("this page has no path for the route " + name);
    return routes[name].replace(/\{(\w+)\}/g, (_, key) => encodeURIComponent(params[key]));
  };
})();
