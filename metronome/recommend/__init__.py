"""Recommendations: items associated with an item, from the baskets they share."""
