"""Analysis: summary, saturation finding, plots and the HTML report, all from warehouse rows."""
