"""The site service: a stream processor per site."""

from streamfed.site.build import build_site
from streamfed.site.processor import SiteProcessor, SiteReport, SiteState, SiteTopics

__all__ = ["SiteProcessor", "SiteReport", "SiteState", "SiteTopics", "build_site"]
