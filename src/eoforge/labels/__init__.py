"""Labels: the class schema, and label sources (SCL, polygons, points, class rasters) per tile."""
