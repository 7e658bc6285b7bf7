-- One database per service: no service reads another's tables.
--
-- Mounted into the postgres container at /docker-entrypoint-initdb.d by
-- compose.yaml. The image runs it once, as POSTGRES_USER, when the data volume is
-- empty. On an existing volume, add a missing database by hand, e.g.
--   docker compose exec postgres createdb -U shop order_svc
-- or start afresh with `docker compose down --volumes` (deletes all data).
--
-- Names: the service name with '-' turned into '_' (order-svc -> order_svc);
-- compose.yaml's DATABASE_URL values and tests/tests/compose.rs rely on it.

CREATE DATABASE user_svc;
CREATE DATABASE product_svc;
CREATE DATABASE order_svc;
CREATE DATABASE inventory_svc;
CREATE DATABASE payment_svc;
CREATE DATABASE notification_svc;
