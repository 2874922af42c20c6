-- Lets a single-statement change (data-modifying CTEs) abort itself, and with it every row it
-- wrote, when one of its compare-and-set guards did not hold. See src/store/postgres_batch.rs.
CREATE FUNCTION tolov_guard(ok boolean, what text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'tolov_guard:%', what;
    END IF;
    RETURN true;
END
$$;
