-- 0015: Policy.speedup_relative (field 33) is retired for
-- Policy.comparative_advantage (field 37).
--
-- speedup_relative gave a share of w_speedup to comparative advantage alone,
-- which cancelled whenever every job sped up alike on a GPU model (and for a
-- lone pending job); comparative_advantage scales the job's own speed by its
-- advantage and cannot cancel. Every stored policy keeps its value under the
-- new field: in policy_pb (the Policy message, proto3 binary), the key of
-- field 33 (wire type 1, a double: bytes 0x89 0x02) becomes the key of field
-- 37 (0xa9 0x02); the eight value bytes stay. The message is walked field by
-- field, so a value byte that happens to equal a key is never touched.
CREATE FUNCTION gm_policy_pb_0015(p bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    i integer := 0;
    n integer := length(p);
    o bytea := ''::bytea;
    start integer;
    tag bigint;
    shift integer;
    b integer;
    len bigint;
    wt integer;
BEGIN
    WHILE i < n LOOP
        start := i;
        tag := 0;
        shift := 0;
        LOOP
            b := get_byte(p, i);
            i := i + 1;
            tag := tag | ((b & 127)::bigint << shift);
            shift := shift + 7;
            EXIT WHEN b < 128;
        END LOOP;
        wt := (tag & 7)::integer;
        IF wt = 0 THEN
            LOOP
                b := get_byte(p, i);
                i := i + 1;
                EXIT WHEN b < 128;
            END LOOP;
        ELSIF wt = 1 THEN
            i := i + 8;
        ELSIF wt = 5 THEN
            i := i + 4;
        ELSIF wt = 2 THEN
            len := 0;
            shift := 0;
            LOOP
                b := get_byte(p, i);
                i := i + 1;
                len := len | ((b & 127)::bigint << shift);
                shift := shift + 7;
                EXIT WHEN b < 128;
            END LOOP;
            i := i + len::integer;
        ELSE
            RAISE EXCEPTION 'policy_pb: wire type % at byte %', wt, start;
        END IF;
        IF i > n THEN
            RAISE EXCEPTION 'policy_pb: truncated field at byte %', start;
        END IF;
        IF tag = (33 << 3) | 1 THEN
            o := o || '\xa902'::bytea || substring(p FROM i - 7 FOR 8);
        ELSE
            o := o || substring(p FROM start + 1 FOR i - start);
        END IF;
    END LOOP;
    RETURN o;
END
$$;

UPDATE policies SET policy_pb = gm_policy_pb_0015(policy_pb)
 WHERE position('\x8902'::bytea IN policy_pb) > 0;

DROP FUNCTION gm_policy_pb_0015(bytea);
