"""The national tables' Iceberg catalog: pyiceberg's SQL catalog (name `hdh`, namespace `omop`) in the HDH zone's
PostgreSQL, its data and metadata files in the landing bucket under `<landing prefix>iceberg/`, read and written
through pyiceberg's PyArrow FileIO on the landing zone's endpoint (with its private CA when it has one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io.pyarrow import PyArrowFileIO

from eds_network.core.config import NationalTarget
from eds_network.core.storage import S3Endpoint

CATALOG_NAME = "hdh"
NAMESPACE = "omop"


def warehouse_location(target: NationalTarget) -> str:
    return f"s3://{target.landing_zone.bucket}/{target.landing_zone.prefix}iceberg"


def sqlalchemy_url(dsn: str) -> str:
    """A libpq URL (`postgresql://...`) as SQLAlchemy's psycopg 3 URL."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


@dataclass(frozen=True)
class NationalTables:
    """What the HDH zone's table tasks need: its PostgreSQL (catalog + ledger) and the landing endpoint."""

    dsn: str = field(repr=False)
    landing: S3Endpoint

    def catalog(self, target: NationalTarget) -> SqlCatalog:
        props = {
            "uri": sqlalchemy_url(self.dsn),
            "warehouse": warehouse_location(target),
            "s3.access-key-id": self.landing.access_key or "",
            "s3.secret-access-key": self.landing.secret_key or "",
            "s3.region": self.landing.region,
            "s3.force-virtual-addressing": "false",
        }
        if self.landing.endpoint_url:
            props["s3.endpoint"] = self.landing.endpoint_url
        if self.landing.ca_bundle:  # a private CA: pyiceberg has no property for it, our FileIO passes it on
            props["py-io-impl"] = f"{__name__}.CaBundleFileIO"
            props[CA_BUNDLE_PROPERTY] = self.landing.ca_bundle
        return SqlCatalog(CATALOG_NAME, **props)


CA_BUNDLE_PROPERTY = "eds.s3.ca-bundle"


class CaBundleFileIO(PyArrowFileIO):
    """pyiceberg's PyArrow FileIO whose S3 filesystem verifies the endpoint with the landing zone's CA bundle."""

    def _initialize_s3_fs(self, netloc):
        fs = super()._initialize_s3_fs(netloc)
        ca = self.properties.get(CA_BUNDLE_PROPERTY)
        if not ca:
            return fs
        rebuild, (options,) = fs.__reduce__()  # pyarrow's own constructor arguments of this filesystem
        return rebuild({**options, "tls_ca_file_path": ca})
