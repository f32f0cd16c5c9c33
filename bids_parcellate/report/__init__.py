"""Reports: figure functions (the HTML assembly lands with the reports issue)."""
