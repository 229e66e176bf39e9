"""Routing rules of the DICOM listener (medstack/routing.py): first match wins, typos are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from core.settings import PacsRoute, Settings
from medstack.routing import check_routes, route_for


def series(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


ROUTES = [
    PacsRoute(name="brain-mr", match={"Modality": ["MR"], "BodyPartExamined": ["BRAIN", "HEAD"]}),
    PacsRoute(name="ct-chest", match={"Modality": ["CT"], "ImageType": ["AXIAL"]}, model="segmentation_pctnet"),
    PacsRoute(name="any-ct", match={"Modality": ["ct"]}),
]


@pytest.mark.parametrize(("attributes", "expected"), [
    ({"Modality": "CT", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]}, "ct-chest"),  # a multi-valued attribute
    ({"Modality": "CT", "ImageType": ["DERIVED", "SECONDARY", "LOCALIZER"]}, "any-ct"),  # first match wins
    ({"Modality": "CT "}, "any-ct"),  # case and padding do not matter
    ({"Modality": "MR", "BodyPartExamined": "HEAD"}, "brain-mr"),
    ({"Modality": "MR"}, None),  # an attribute the series lacks never matches
    ({"Modality": "CR"}, None),
])
def test_first_matching_rule_wins(attributes: dict[str, object], expected: str | None) -> None:
    route = route_for(ROUTES, series(**attributes))
    assert (route.name if route else None) == expected


def test_rule_without_conditions_matches_everything() -> None:
    assert route_for([PacsRoute(name="all")], series(Modality="OT")).name == "all"  # type: ignore[union-attr]


def test_a_keyword_dicom_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="Modalty"):
        check_routes([PacsRoute(name="typo", match={"Modalty": ["CT"]})])


def test_a_route_must_send_to_a_configured_destination() -> None:
    with pytest.raises(ValidationError, match="not in MEDSTACK_DICOM_DESTINATIONS"):
        Settings(listener_routes=[PacsRoute(name="ct", destination="nowhere")])
    ok = Settings(listener_routes=[PacsRoute(name="ct", destination="pacs")],
                  dicom_destinations={"pacs": {"ae_title": "ORTHANC", "host": "pacs", "port": 4242}})
    assert ok.listener_routes[0].destination == "pacs"


def test_routes_and_servers_are_read_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSTACK_DICOMWEB_SERVERS", '{"pacs": {"url": "http://pacs:8042/dicom-web", '
                       '"username": "medstack", "password": "s3cret"}}')
    monkeypatch.setenv("MEDSTACK_LISTENER_ROUTES", '[{"name": "ct", "match": {"Modality": ["CT"]}}]')
    s = Settings()
    assert s.dicomweb_servers["pacs"].password.get_secret_value() == "s3cret"  # type: ignore[union-attr]
    assert "s3cret" not in repr(s)
    assert s.listener_routes[0].match == {"Modality": ["CT"]}
