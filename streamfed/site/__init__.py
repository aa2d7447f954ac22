"""The site service: a stream processor per site, around a Kafka-free learner."""

from streamfed.site.build import build_learner, build_site
from streamfed.site.learner import SiteLearner, SiteReport, SiteState
from streamfed.site.processor import SiteProcessor, SiteTopics

__all__ = ["SiteLearner", "SiteProcessor", "SiteReport", "SiteState", "SiteTopics", "build_learner", "build_site"]
