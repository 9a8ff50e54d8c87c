"""The stream gages app's own tests, as a user writes them with storekeeper's pytest plugin:
no conftest, the app is found through its entry point."""

from sqlalchemy import select

from gauges.model import StreamGage, list_gauges


def test_a_new_gage_is_listed(dbsession, storekeeper_app):
    dbsession.add(StreamGage(latitude=40.0, longitude=-111.0, value=7))
    dbsession.commit()  # only a savepoint: rolled back after the test
    assert len(list_gauges(storekeeper_app)) == 3  # app.session() joins the test's transaction


def test_the_next_test_starts_clean(dbsession):
    assert len(dbsession.scalars(select(StreamGage)).all()) == 2
