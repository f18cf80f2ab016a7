// eoforge labelling page: one key press per class, undo, save (POST to the local server).
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("config").textContent);
  var points = config.points;
  var labels = [];  // {rank, class}, in the order given; undo pops the last
  var index = 0;    // the point being asked about
  var map = L.map("map", { keyboard: false });
  var layers = {};
  var bounds = null;
  config.overlays.forEach(function (o) {
    var b = L.latLngBounds([o.bounds[0], o.bounds[1]], [o.bounds[2], o.bounds[3]]);
    bounds = bounds ? bounds.extend(b) : b;
  });
  // the view first: Leaflet adds layers to a map without a view only later, in its own order
  if (bounds) map.fitBounds(bounds); else map.setView([0, 0], 2);
  var order = { "true colour": 0, "prediction": 1, "uncertainty": 2 };
  config.overlays.slice().sort(function (a, b) { return order[a.layer] - order[b.layer]; })
    .forEach(function (o) {
      var b = L.latLngBounds([o.bounds[0], o.bounds[1]], [o.bounds[2], o.bounds[3]]);
      var name = o.layer + " · " + o.scene;
      var opacity = o.layer === "true colour" ? 1.0 : 0.6;
      layers[name] = L.imageOverlay(o.url, b, { opacity: opacity, alt: name });
      // true colour under the prediction; the uncertainty one click away, on top
      if (o.layer !== "uncertainty") layers[name].addTo(map);
    });
  L.control.layers(null, layers, { collapsed: false }).addTo(map);
  var markers = points.map(function (p) {
    return L.circleMarker([p.lat, p.lon], { radius: 5, color: "#ffffff", weight: 1, fillOpacity: 0.6 })
      .bindTooltip("#" + p.rank).addTo(map);
  });

  function labelOf(rank) {
    for (var i = labels.length - 1; i >= 0; i--) if (labels[i].rank === rank) return labels[i]["class"];
    return null;
  }
  function show() {
    markers.forEach(function (m, i) {
      var cls = labelOf(points[i].rank);
      var colour = cls === null ? "#ffffff" : config.colours[config.classes.indexOf(cls)];
      m.setStyle({ fillColor: colour, color: i === index ? "#ff2bd6" : "#ffffff",
                   weight: i === index ? 4 : 1, radius: i === index ? 9 : 5 });
    });
    document.getElementById("progress").textContent =
      labels.length + " labelled, point " + Math.min(index + 1, points.length) + " of " + points.length;
    var cur = document.getElementById("current");
    if (index < points.length) {
      var p = points[index];
      cur.textContent = "#" + p.rank + " in " + p.item_id + ": model says " + p.predicted +
        " (entropy " + p.entropy.toFixed(2) + ")";
      map.setView([p.lat, p.lon], Math.max(map.getZoom(), 12));
    } else {
      cur.textContent = "all points done: press s to save";
    }
  }
  function label(k) {
    if (index >= points.length || k >= config.classes.length) return;
    labels.push({ rank: points[index].rank, "class": config.classes[k] });
    index += 1;
    show();
  }
  function undo() {
    if (!labels.length) return;
    var last = labels.pop();
    for (var i = 0; i < points.length; i++) if (points[i].rank === last.rank) index = i;
    show();
  }
  function save() {
    var status = document.getElementById("status");
    status.textContent = "saving…";
    fetch("save", { method: "POST", headers: { "Content-Type": "application/json" },
                    body: JSON.stringify({ labels: labels }) })
      .then(function (r) { return r.json().then(function (j) { return [r.ok, j]; }); })
      .then(function (res) {
        status.textContent = res[0] ? "saved " + res[1].saved + " labels to " + res[1].path
                                    : "not saved: " + res[1].error;
      })
      .catch(function (e) { status.textContent = "not saved: " + e; });
  }
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key >= "1" && e.key <= "9") { label(Number(e.key) - 1); e.preventDefault(); }
    else if (e.key === " ") { if (index < points.length) { index += 1; show(); } e.preventDefault(); }
    else if (e.key === "u" || e.key === "Backspace") { undo(); e.preventDefault(); }
    else if (e.key === "s") { save(); e.preventDefault(); }
  });
  document.getElementById("save").addEventListener("click", save);
  show();
}());
